"""The letter template: the header block, the sandbox, strict variables, line numbers, HTML."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CampaignFiles, Result

from mailer.errors import ConfigError, InputError
from mailer.template import LetterTemplate, Multipart, Part, Rendered, RenderError

Run = Callable[..., Result]
TEMPLATE = Path("templates/letter.txt")
ADA = {"email": "ada@example.org", "title": "Dr", "name": "Ada Lovelace",
       "sender_name": "Olive Organiser", "sender_email": "organiser@example.org"}


def load(files: CampaignFiles, text: str, html: str | None = None) -> LetterTemplate:
    files.write_template(text, html)
    return LetterTemplate.load(TEMPLATE)


def text_of(rendered: Rendered) -> str:
    """The text of a body that is one plain part."""
    assert isinstance(rendered.body, Part)
    assert rendered.body.subtype == "plain"
    return rendered.body.text


def problems_of(files: CampaignFiles, text: str, html: str | None = None) -> list[str]:
    with pytest.raises(InputError) as caught:
        load(files, text, html)
    return [str(problem) for problem in caught.value.problems]


def render_error(files: CampaignFiles, body: str) -> str:
    template = load(files, "Subject: Hello\n\n" + body)
    with pytest.raises(RenderError) as caught:
        template.render(ADA)
    return str(caught.value)


# --- the header block --------------------------------------------------------------------------


def test_header_names_are_case_insensitive(files: CampaignFiles) -> None:
    template = load(files, "SUBJECT: Hi\nto: {{ name }} <{{ email }}>\nreply-TO: r@example.org\n"
                           "cc: c@example.org\nbcc: b@example.org\nfrom: f@example.org\n\nBody\n")
    assert [name for name, _, _ in template.headers] == ["Subject", "To", "Reply-To", "Cc", "Bcc",
                                                         "From"]


def test_header_continuation_lines_are_joined_with_a_space(files: CampaignFiles) -> None:
    template = load(files, "Subject: Human rights\n  in Hong Kong\n\tand {{ name }}\n\nBody\n")
    assert template.headers == [("Subject", "Human rights in Hong Kong and {{ name }}", 1)]
    assert template.render(ADA).get("Subject") == ["Human rights in Hong Kong and Ada Lovelace"]


def test_attachment_header_may_repeat(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi\nAttachment: a.pdf\nattachment: b.txt\n\nBody\n")
    assert template.render(ADA).get("Attachment") == ["a.pdf", "b.txt"]


def test_other_headers_pass_through_as_written(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi\nX-Campaign: hk-{{ title }}\nKeywords: rights\n\nBody\n")
    assert template.render(ADA).headers == [("Subject", "Hi"), ("X-Campaign", "hk-Dr"),
                                            ("Keywords", "rights")]


@pytest.mark.parametrize("header", ["Date: today", "Message-ID: <x@y>"])
def test_reserved_headers_are_rejected_at_their_line(files: CampaignFiles, header: str) -> None:
    name = header.partition(":")[0]
    assert problems_of(files, f"Subject: Hi\n{header}\n\nBody\n") == [
        f"templates/letter.txt:2: the {name} header is set by mailer; remove it from the template"]


def test_a_missing_subject_is_a_warning_not_a_refusal(files: CampaignFiles) -> None:
    template = load(files, "To: {{ email }}\n\nBody\n")
    assert [str(w) for w in template.warnings] == [
        "templates/letter.txt:1: warning: no Subject header; the letters will have none (add a "
        "line 'Subject: ...' at the top)"]
    assert template.render(ADA).get("Subject") == []


def test_second_subject_is_reported_at_its_line(files: CampaignFiles) -> None:
    assert problems_of(files, "Subject: One\nX-A: b\nsubject: Two\n\nBody\n") == [
        "templates/letter.txt:3: a second Subject header; keep one"]


def test_the_first_line_that_is_not_a_header_starts_the_body_with_a_warning(
        files: CampaignFiles) -> None:
    # As mailmerge (Python's email parser) reads a template.
    template = load(files, "Subject: Hi\nDear {{ name }},\n\nBody\n")
    assert text_of(template.render(ADA)) == "Dear Ada Lovelace,\n\nBody\n"
    assert [str(w) for w in template.warnings] == [
        "templates/letter.txt:2: warning: no blank line after the headers: the letter starts "
        "here (add a blank line above it to make that plain)"]


def test_body_starts_after_the_first_blank_line(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi\n\nDear {{ name }},\n\nBye\n")
    assert text_of(template.render(ADA)) == "Dear Ada Lovelace,\n\nBye\n"


def test_form_feed_in_the_body_is_kept_and_does_not_shift_line_numbers(
        files: CampaignFiles) -> None:
    # str.splitlines used to turn a form feed (page break) into a line break.
    template = load(files, "Subject: Hi\n\nPage one\x0cpage two\n")
    assert text_of(template.render(ADA)) == "Page one\x0cpage two\n"
    assert problems_of(files, "Subject: Hi\n\nPage one\x0c\u2028two\n{{ oops( }}\n") == [
        "templates/letter.txt:4: template syntax: unexpected '}', expected ')'"]


# --- sandbox and strictness --------------------------------------------------------------------


@pytest.mark.parametrize("body", ["{{ ''.__class__.__mro__ }}",
                                  "{{ name.__class__.__mro__[1].__subclasses__() }}",
                                  "{{ '{0.__class__}'.format(name) }}"])
def test_sandbox_refuses_dunder_attributes(files: CampaignFiles, body: str) -> None:
    assert render_error(files, body) == (
        "template: access to attribute '__class__' of 'str' object is unsafe.")


def test_sandbox_refuses_function_globals(files: CampaignFiles) -> None:
    assert render_error(files, "{{ cycler.__init__.__globals__.os }}") == (
        "template: access to attribute '__init__' of 'type' object is unsafe.")


def test_sandbox_limit_is_a_render_problem_not_a_crash(files: CampaignFiles) -> None:
    # OverflowError used to escape render() and end the run with a traceback.
    assert render_error(files, "{{ range(10 ** 6) | list | length }}") == (
        "template: OverflowError: Range too big. The sandbox blocks ranges larger than "
        "MAX_RANGE (100000).")


def test_failing_template_expression_is_a_render_problem(files: CampaignFiles) -> None:
    assert render_error(files, "{{ 1 / 0 }}") == "template: ZeroDivisionError: division by zero"


def test_undefined_attribute_raises_instead_of_rendering_empty(files: CampaignFiles) -> None:
    assert render_error(files, "Dear {{ name.surname }}") == (
        "template: 'str object' has no attribute 'surname'")


def test_undefined_variable_raises_instead_of_rendering_empty(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi\n\nDear {{ nickname }}\n")
    with pytest.raises(RenderError, match="'nickname' is undefined"):
        template.render(ADA)


@pytest.mark.parametrize("value", ["Ada\nBcc: evil@example.com", "Ada\rX", "Ada\0"],
                         ids=["LF", "CR", "NUL"])
def test_value_with_line_break_in_a_header_is_a_render_error(
        files: CampaignFiles, value: str) -> None:
    template = load(files, "Subject: Hello {{ name }}\n\nDear {{ name }}\n")
    with pytest.raises(RenderError, match="a value placed in a header contains a line break"):
        template.render({**ADA, "name": value})


def test_value_with_a_control_character_in_a_header_is_a_render_error(
        files: CampaignFiles) -> None:
    template = load(files, "Subject: Hello {{ name }}\n\nDear {{ name }}\n")
    with pytest.raises(RenderError) as caught:
        template.render({**ADA, "name": "Ada\x1b[2J"})
    assert str(caught.value) == "a value placed in a header contains a control character"


def test_value_with_line_break_in_the_body_is_fine(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hello\n\nDear {{ name }}\n")
    assert text_of(template.render({**ADA, "name": "Ada\nLovelace"})) == "Dear Ada\nLovelace\n"


def test_quote_in_a_value_cannot_leave_a_quoted_display_name(files: CampaignFiles) -> None:
    template = load(files, 'Subject: Hi\nTo: "{{ name }}" <{{ email }}>\n\nBody\n')
    rendered = template.render({**ADA, "name": 'Ada" <evil@example.com>, "x\\'})
    assert rendered.get("To") == ['"Ada\\" <evil@example.com>, \\"x\\\\" <ada@example.org>']


# --- variables ---------------------------------------------------------------------------------


def test_variables_are_located_at_their_first_use(files: CampaignFiles) -> None:
    template = load(files, "Subject: About {{ country }}\n\nDear {{ name }},\n\n"
                           "{{ country }} and {{ role }}\n",
                    html="<p>Dear {{ name }}</p>\n<p>{{ party }}</p>\n")
    assert template.variables() == {"country": ("templates/letter.txt", 1),
                                    "name": ("templates/letter.txt", 3),
                                    "role": ("templates/letter.txt", 5),
                                    "party": ("templates/letter.html", 2)}


def test_loop_and_set_variables_are_not_columns(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi\n\n{% set greeting = 'Dear' %}{{ greeting }}\n"
                           "{% for word in name.split() %}{{ word }}{% endfor %}\n")
    assert set(template.variables()) == {"name"}


def test_tested_or_defaulted_variables_are_optional(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi {{ name }}\n\n{% if note %}{{ note }}{% endif %}\n"
                           "{{ nickname | default('friend') }} {{ sender_name }}\n")
    assert template.required_fields() == {"name"}


def test_header_variables_include_the_default_to_fields(files: CampaignFiles) -> None:
    # Without a To header, title and name are shown in the default To header, so they must be
    # single-line too (a line break used to reach the header encoded).
    template = load(files, "Subject: Hi {{ country }}\n\nDear {{ title }} {{ name }}\n")
    assert template.header_variables() == {"country", "title", "name"}
    with_to = load(files, "Subject: Hi\nTo: {{ email }}\n\nDear {{ name }}\n")
    assert with_to.header_variables() == {"email"}


def test_missing_columns_are_reported_by_check_with_template_lines(
        files: CampaignFiles, run: Run) -> None:
    files.write_template("Subject: About {{ region }}\nTo: {{ email }}\n\nDear {{ name }},\n"
                         "{{ party }}\n", html="<p>{{ name }}</p>\n<p>{{ committee }}</p>\n")
    result = run("check")
    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        "templates/letter.html:2: uses {{ committee }}, but the recipient list has no column "
        "'committee'; add the column or change the template\n"
        "templates/letter.txt:1: uses {{ region }}, but the recipient list has no column "
        "'region'; add the column or change the template\n"
        "templates/letter.txt:5: uses {{ party }}, but the recipient list has no column "
        "'party'; add the column or change the template\n")


def test_settings_variables_are_not_missing_columns(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi\n\n{{ sender_name }} <{{ sender_email }}>\n")
    assert template.missing_columns(["email"]) == []


# --- syntax errors -----------------------------------------------------------------------------


def test_syntax_errors_are_reported_with_file_lines_for_every_part(files: CampaignFiles) -> None:
    assert problems_of(files, "Subject: Hi {{ name\nTo: {{ email }}\n\nDear\n\n{% if %}\n",
                       html="<p>\n{{ name | }}\n") == [
        "templates/letter.txt:1: template syntax: unexpected end of template, expected "
        "'end of print statement'.",
        "templates/letter.txt:6: template syntax: Expected an expression, got 'end of "
        "statement block'",
        "templates/letter.html:2: template syntax: expected token 'name', got 'end of print "
        "statement'"]


def test_unclosed_block_is_reported(files: CampaignFiles) -> None:
    problems = problems_of(files, "Subject: Hi\n\nDear\n{% for x in name %}\n{{ x }}\n")
    assert len(problems) == 1
    assert problems[0].startswith("templates/letter.txt:")
    assert "template syntax: Unexpected end of template" in problems[0]
    assert "'endfor'" in problems[0]


def test_template_that_is_not_utf8_is_reported_at_its_line(files: CampaignFiles) -> None:
    TEMPLATE.write_bytes("Subject: Hi\n\nDear Zoë\n".encode("latin-1"))
    with pytest.raises(InputError) as caught:
        LetterTemplate.load(TEMPLATE)
    assert str(caught.value) == "templates/letter.txt:3: is not UTF-8; save the template as UTF-8"


def test_missing_template_is_a_config_error(files: CampaignFiles) -> None:
    with pytest.raises(ConfigError) as caught:
        LetterTemplate.load(Path("templates/nope.txt"))
    assert str(caught.value) == ("templates/nope.txt: cannot read the template: No such file or "
                                 "directory")


# --- HTML alternative --------------------------------------------------------------------------


def test_html_sibling_is_rendered_with_autoescape(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi {{ name }}\n\nDear {{ name }},\n",
                    html="<p>Dear {{ name }},</p>\n<p>{{ '<b>' | safe }}x</p>\n")
    rendered = template.render({**ADA, "name": "Ada <b>&</b> Co"})
    assert rendered.body == Multipart("alternative", (
        Part("plain", "Dear Ada <b>&</b> Co,\n"),
        Part("html", "<p>Dear Ada &lt;b&gt;&amp;&lt;/b&gt; Co,</p>\n<p><b>x</p>\n")))
    assert rendered.get("Subject") == ["Hi Ada <b>&</b> Co"]


def test_no_html_sibling_means_text_only(files: CampaignFiles) -> None:
    template = load(files, "Subject: Hi\n\nDear\n")
    assert template.render(ADA).body == Part("plain", "Dear\n")


@pytest.mark.parametrize("value", ["Ada\x85Bcc: x", "Ada\u2028Bcc: x", "Ada\u2029Bcc: x"],
                         ids=["NEL", "LS", "PS"])
def test_value_with_a_unicode_line_separator_in_a_header_is_a_render_error(
        files: CampaignFiles, value: str) -> None:
    # Mail readers break the displayed header there; it used to be RFC 2047-encoded and sent.
    template = load(files, "Subject: Hello {{ name }}\n\nDear {{ name }}\n")
    with pytest.raises(RenderError, match="a value placed in a header contains a line break"):
        template.render({**ADA, "name": value})


# --- address positions -------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ("Cc: {{ assistant }}", {"assistant"}),
    ('Cc: "Office of {{ name }}" <{{ assistant }}>', {"assistant"}),
    ("Reply-To: {{ name }} < {{ assistant }} >", {"assistant"}),
    ("Bcc: archive@example.org, {{ assistant }}", {"assistant"}),
    ('Cc: "{{ assistant }}"', {"assistant"}),
    ("Cc: {% if assistant %}{{ assistant }}{% endif %}", {"assistant"}),
    ("Cc: office@example.org{% if assistant %}, {{ assistant }}{% endif %}", {"assistant"}),
    ("Cc: {% if a %}<{{ a }}>{% elif b %}{{ b }}{% else %}{{ c }} <x@example.org>{% endif %}",
     {"a", "b"}),
    ("To: {{ name }} <{{ email }}>", {"email"}),
    ('To: "{{ title }} {{ name }}" <{{ email }}>', {"email"}),
    ('To: "{{ name }}, {{ title }}" <{{ email }}>', {"email"}),
    ("Reply-To: {{ sender_email }}", {"sender_email"}),
    ("Cc: {{ assistant | lower }}", set()),
    ("Cc: {{ user }}@example.org", set()),
    ("Cc: <{{ user }}@example.org>", set()),
    ("Cc: {{ first }}{{ last }}", set()),
    ("Cc: {{ name }} {{ assistant }}", set()),
    ("Cc: {% set x = name %}{{ x }}", set()),
    ("Cc: {% for a in assistants.split() %}{{ a }}, {% endfor %}x@example.org", set()),
    ("From: {{ desk }}", set()),
    ("X-Contact: {{ assistant }}", set()),
])
def test_address_variables_are_those_used_whole_as_an_address(
        files: CampaignFiles, header: str, expected: set[str]) -> None:
    template = load(files, f"Subject: Hi\n{header}\n\nBody\n")
    assert template.address_variables() == expected
