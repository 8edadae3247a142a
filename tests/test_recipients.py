"""The recipient list: CSV dialects, per-column validation, problem locations, duplicates and
bounded memory. Files are written into the campaign folder (the working directory), so problems
read `recipients.csv:LINE: column: problem` exactly as the CLI prints them."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import CampaignFiles

from mailer.campaign import MAX_PROBLEMS, CheckReport
from mailer.errors import ConfigError, InputError, Problem
from mailer.recipients import Recipient, RecipientList

CSV = Path("recipients.csv")


def read(files: CampaignFiles, text: str, *, required: Iterable[str] = (),
         single_line: Iterable[str] = (), addresses: Iterable[str] = (),
         allow_duplicates: bool = False,
         encoding: str = "utf-8") -> tuple[list[Recipient], list[str]]:
    """Write `text` as recipients.csv and read it all: the valid rows and every problem."""
    files.write_csv(text, encoding)
    recipients = RecipientList(CSV, required=required, single_line=single_line,
                               addresses=addresses, allow_duplicates=allow_duplicates)
    items = list(recipients)
    rows = [item for item in items if isinstance(item, Recipient)]
    return rows, [str(item) for item in items if isinstance(item, Problem)]


# --- encodings and dialects --------------------------------------------------------------------


def test_utf8_without_bom_keeps_non_ascii_fields(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name\njurgen@example.org,Jürgen Müller\n")
    assert problems == []
    assert rows[0].fields["name"] == "Jürgen Müller"


def test_utf8_bom_is_not_part_of_the_first_column_name(files: CampaignFiles) -> None:
    rows, problems = read(files, "\ufeffemail,name\nzoe@example.org,Zoë Lefèvre\n")
    assert problems == []
    assert list(rows[0].fields) == ["email", "name"]
    assert rows[0].email == "zoe@example.org"


@pytest.mark.parametrize("delimiter", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_delimiter_is_sniffed_from_the_header(files: CampaignFiles, delimiter: str) -> None:
    others = "".join(d for d in ",;" if d != delimiter)  # data may hold the other delimiters
    text = delimiter.join(["email", "name", "country"]) + "\n" + delimiter.join(
        ["ada@example.org", f"Lovelace{others} Ada", "UK"]) + "\n"
    rows, problems = read(files, text)
    assert problems == []
    assert rows[0].fields == {"email": "ada@example.org", "name": f"Lovelace{others} Ada",
                              "country": "UK"}


def test_crlf_line_endings_are_read_like_lf(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name\r\nada@example.org,Ada\r\ngrace@example.net,Grace\r\n")
    assert problems == []
    assert [(r.line, r.fields["name"]) for r in rows] == [(2, "Ada"), (3, "Grace")]


@pytest.mark.parametrize("header", ["Email", "EMAIL", " eMail "])
def test_email_header_is_case_insensitive(files: CampaignFiles, header: str) -> None:
    rows, problems = read(files, f"name,{header}\nAda,ada@example.org\n")
    assert problems == []
    assert rows[0].email == "ada@example.org"
    assert rows[0].fields["email"] == "ada@example.org"


def test_every_other_column_becomes_a_field(files: CampaignFiles) -> None:
    rows, _ = read(files, "email,title,name,country,role\n"
                          "ada@example.org,Dr,Ada Lovelace,UK,Analyst\n")
    assert rows[0].fields == {"email": "ada@example.org", "title": "Dr", "name": "Ada Lovelace",
                              "country": "UK", "role": "Analyst"}


def test_email_is_stripped_and_its_domain_normalized(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name\n  Ada@EXAMPLE.Org ,Ada\n")
    assert problems == []
    assert rows[0].email == "Ada@example.org"


def test_blank_lines_are_skipped_but_still_counted(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name\n\nada@example.org,Ada\n\n\nnot-an-address,Bob\n")
    assert [r.line for r in rows] == [3]
    assert len(problems) == 1
    assert problems[0].startswith("recipients.csv:6: email: ")


# --- problems ----------------------------------------------------------------------------------


def test_invalid_email_is_reported_at_its_line_and_column(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name\nada@example.org,Ada\nnot-an-address,Bob\n")
    assert [r.email for r in rows] == ["ada@example.org"]
    assert problems == ["recipients.csv:3: email: 'not-an-address' is not a valid address: An "
                        "email address must have an @-sign."]


def test_empty_email_is_reported(files: CampaignFiles) -> None:
    _, problems = read(files, "email,name\n  ,Ada\n")
    assert problems == ["recipients.csv:2: email: is empty; every row needs an address"]


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_empty_required_field_is_reported(files: CampaignFiles, value: str) -> None:
    rows, problems = read(files, f"email,name\nada@example.org,{value}\n", required={"name"})
    assert rows == []
    assert problems == ["recipients.csv:2: name: is empty, but the template uses it; fill it in"]


def test_empty_optional_field_is_accepted(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name,note\nada@example.org,Ada,\n", required={"name"})
    assert problems == []
    assert rows[0].fields["note"] == ""


@pytest.mark.parametrize("value", ['"Ada\nLovelace"', '"Ada\r\nLovelace"', '"Ada\rLovelace"'],
                         ids=["LF", "CRLF", "CR"])
def test_line_break_in_a_header_field_is_reported(files: CampaignFiles, value: str) -> None:
    rows, problems = read(files, f"email,name\nada@example.org,{value}\n", single_line={"name"})
    assert rows == []
    assert problems == ["recipients.csv:2: name: contains a line break, but it is used in a mail "
                        "header; put it on one line"]


@pytest.mark.parametrize("char", ["\x1b", "\x0b", "\x7f"])
def test_control_character_in_a_header_field_is_reported(files: CampaignFiles, char: str) -> None:
    # Mail readers flag control characters in a header even inside an RFC 2047 encoded word.
    rows, problems = read(files, f"email,name\nada@example.org,Ada{char}\n", single_line={"name"})
    assert rows == []
    assert problems == [f"recipients.csv:2: name: contains a control character "
                        f"(U+{ord(char):04X}), but it is used in a mail header; remove it"]


def test_tab_in_a_header_field_is_accepted(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name\nada@example.org,Ada\tLovelace\n",
                          single_line={"name"})
    assert problems == []
    assert rows[0].fields["name"] == "Ada\tLovelace"


def test_line_break_in_a_body_only_field_is_accepted(files: CampaignFiles) -> None:
    rows, problems = read(files, 'email,name,note\nada@example.org,Ada,"two\nlines"\n',
                          single_line={"name"})
    assert problems == []
    assert rows[0].fields["note"] == "two\nlines"


@pytest.mark.parametrize("column", ["email", "name", "note"])
def test_nul_is_reported_in_any_column(files: CampaignFiles, column: str) -> None:
    values = {"email": "ada@example.org", "name": "Ada", "note": "hello"}
    values[column] = values[column][:2] + "\0" + values[column][2:]
    _, problems = read(files, "email,name,note\n" + ",".join(values.values()) + "\n")
    assert problems == [f"recipients.csv:2: {column}: contains a NUL character; remove it"]


@pytest.mark.parametrize("row", ["ada@example.org,Ada", "ada@example.org,Ada,UK,extra"])
def test_wrong_field_count_is_reported(files: CampaignFiles, row: str) -> None:
    rows, problems = read(files, f"email,name,country\n{row}\ngrace@example.net,Grace,US\n")
    count = row.count(",") + 1
    assert [r.email for r in rows] == ["grace@example.net"]
    assert problems == [f"recipients.csv:2: has {count} fields but the header has 3; "
                        "quote values that contain ','"]


def test_malformed_quotes_are_reported_and_later_rows_still_checked(
        files: CampaignFiles) -> None:
    # Reading used to stop at the first malformed record, hiding every problem after it.
    rows, problems = read(files, 'email,name\nada@example.org,"Ada"x\nnot-an-address,Bob\n'
                                 "grace@example.net,Grace\n")
    assert [r.email for r in rows] == ["grace@example.net"]
    assert problems[0] == ("recipients.csv:2: malformed CSV (',' expected after '\"'); "
                           "check the quotes")
    assert problems[1].startswith("recipients.csv:3: email: 'not-an-address' is not a valid")
    assert len(problems) == 2


def test_unclosed_quote_at_the_end_is_reported_at_its_first_line(files: CampaignFiles) -> None:
    _, problems = read(files, 'email,name\nada@example.org,Ada\ngrace@example.net,"Grace\n\n')
    assert problems == ["recipients.csv:3: malformed CSV (unexpected end of data); "
                        "check the quotes"]


def test_line_numbers_are_where_records_start_after_a_multiline_field(
        files: CampaignFiles) -> None:
    text = ('email,name,address\n'
            'ada@example.org,Ada,"12 Some Street\nLondon\nUK"\n'     # lines 2-4
            'bad-one,Bob,Here\n'                                    # line 5
            'grace@example.net,,"1 Navy Road\n\nArlington"\n'        # lines 6-8
            'carol@example.com,Carol,There\n'                         # line 9
            'dave@example.com,"Dave\nSmith",x\n')                     # lines 10-11
    rows, problems = read(files, text, required={"name"}, single_line={"name"})
    assert [(r.line, r.email) for r in rows] == [(2, "ada@example.org"), (9, "carol@example.com")]
    assert [p.split(": ")[0:2] for p in problems] == [
        ["recipients.csv:5", "email"], ["recipients.csv:6", "name"],
        ["recipients.csv:10", "name"]]


def test_all_problems_are_reported_in_one_pass(files: CampaignFiles) -> None:
    text = ("email,title,name\n"
            "ada@example.org,Dr,Ada\n"
            "bad@,Mr,\n"                      # line 3: email and name
            "grace@example.net,Adm\0iral,Grace\n"  # line 4: NUL
            "carol@example.com,Ms\n"          # line 5: field count
            "Ada@Example.ORG,Dr,Ada again\n")  # line 6: duplicate of line 2
    _, problems = read(files, text, required={"name", "title"}, single_line={"name", "title"})
    assert [p.split(": ")[0:2] for p in problems] == [
        ["recipients.csv:3", "email"], ["recipients.csv:3", "name"],
        ["recipients.csv:4", "title"], ["recipients.csv:5", "has 2 fields but the header has 3; "
                                                            "quote values that contain ','"],
        ["recipients.csv:6", "email"]]


def test_problems_beyond_the_limit_are_counted_but_not_kept(files: CampaignFiles) -> None:
    files.write_csv("email\n" + "not-an-address\n" * (MAX_PROBLEMS + 5))
    report = CheckReport()
    for item in RecipientList(CSV):
        assert isinstance(item, Problem)
        report.add(item)
    assert report.problem_count == MAX_PROBLEMS + 5
    assert len(report.problems) == MAX_PROBLEMS
    assert report.summary() == "0 recipients, 10005 problems (5 not listed)"


def test_non_utf8_file_is_an_input_error_naming_line_and_byte(files: CampaignFiles) -> None:
    files.write_csv("email,name\nada@example.org,Ada\nzoe@example.org,Zoë\n", "latin-1")
    recipients = RecipientList(CSV)
    with pytest.raises(InputError) as caught:
        list(recipients)
    assert str(caught.value) == ("recipients.csv:3: is not UTF-8 (byte 0xeb at column 19); "
                                 "save the file as UTF-8 CSV")


def test_a_list_without_an_email_column_is_read_for_its_template_to_address(
        files: CampaignFiles) -> None:
    rows, problems = read(files, "name,title\nAda,Dr\n")
    assert problems == []
    assert [(row.email, row.fields) for row in rows] == [("", {"name": "Ada", "title": "Dr"})]


def test_empty_file_is_an_input_error(files: CampaignFiles) -> None:
    files.write_csv("")
    with pytest.raises(InputError, match="the file is empty"):
        RecipientList(CSV)


def test_unnamed_and_repeated_columns_are_reported_together(files: CampaignFiles) -> None:
    files.write_csv("email,name,,name\n")
    with pytest.raises(InputError) as caught:
        RecipientList(CSV)
    assert sorted(map(str, caught.value.problems)) == [
        "recipients.csv:1: column 'name' appears twice; rename one",
        "recipients.csv:1: column 3 has no name; give every column a header"]


def test_missing_file_is_a_config_error(files: CampaignFiles) -> None:
    with pytest.raises(ConfigError) as caught:
        RecipientList(Path("nope.csv"))
    assert str(caught.value) == ("nope.csv: cannot read the recipient list: No such file or "
                                 "directory")


# --- duplicates --------------------------------------------------------------------------------

DUPLICATES = ("email,name\n"
              "ada@example.org,Ada\n"
              "grace@example.net,Grace\n"
              "ADA@Example.ORG,Ada again\n"
              "ada@example.org,Ada thrice\n")


def test_duplicate_addresses_are_case_insensitive_and_name_both_lines(
        files: CampaignFiles) -> None:
    rows, problems = read(files, DUPLICATES)
    assert [(r.line, r.fields["name"]) for r in rows] == [(2, "Ada"), (3, "Grace")]
    assert problems == [
        "recipients.csv:4: email: ADA@example.org is already on line 2; remove one of the two "
        "rows (or pass --allow-duplicates to keep both: the address gets one letter)",
        "recipients.csv:5: email: ada@example.org is already on line 2; remove one of the two "
        "rows (or pass --allow-duplicates to keep both: the address gets one letter)"]


def test_duplicates_are_kept_with_allow_duplicates(files: CampaignFiles) -> None:
    rows, problems = read(files, DUPLICATES, allow_duplicates=True)
    assert problems == []
    assert [r.line for r in rows] == [2, 3, 4, 5]


def test_an_invalid_row_does_not_count_as_the_first_copy(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,name\nada@example.org,\nada@example.org,Ada\n",
                          required={"name"})
    assert [r.line for r in rows] == [3]
    assert problems == ["recipients.csv:2: name: is empty, but the template uses it; fill it in"]


def test_a_duplicate_names_the_row_that_is_kept_not_an_invalid_one(
        files: CampaignFiles) -> None:
    # It used to name line 2, which is invalid and never sent.
    rows, problems = read(files, "email,name\nada@example.org,\nada@example.org,Ada\n"
                                 "ada@example.org,Ada again\n", required={"name"})
    assert [r.line for r in rows] == [3]
    assert problems == [
        "recipients.csv:2: name: is empty, but the template uses it; fill it in",
        "recipients.csv:4: email: ada@example.org is already on line 3; remove one of the two "
        "rows (or pass --allow-duplicates to keep both: the address gets one letter)"]


# --- streaming ---------------------------------------------------------------------------------


def _peak_while_reading(path: Path, rows: int, *, allow_duplicates: bool) -> int:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,title,name,country\n")
        out.writelines(f"person{i}@example{i % 50}.org,Dr,Person Number {i},Land {i % 200}\n"
                       for i in range(rows))
    recipients = RecipientList(path, required={"name"}, single_line={"title", "name"},
                               allow_duplicates=allow_duplicates)
    tracemalloc.start()
    try:
        assert sum(1 for _ in recipients) == rows
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_rows(files: CampaignFiles) -> None:
    small = _peak_while_reading(files.root / "small.csv", 5_000, allow_duplicates=True)
    large = _peak_while_reading(files.root / "large.csv", 50_000, allow_duplicates=True)
    size = (files.root / "large.csv").stat().st_size
    assert large < small + 256 * 1024, (small, large)
    assert large < size // 8, (large, size)


def test_memory_with_duplicate_detection_is_a_few_bytes_per_row(files: CampaignFiles) -> None:
    rows = 20_000
    peak = _peak_while_reading(files.root / "dedup.csv", rows, allow_duplicates=False)
    assert peak < 1_000_000 + 150 * rows, peak  # a hash per address, not the rows themselves


# --- columns the template reads as settings, as addresses; line separators -------------------


@pytest.mark.parametrize(("column", "setting"), [("sender_name", "MAILER_SENDER_NAME"),
                                                 ("sender_email", "MAILER_FROM")])
def test_a_column_named_like_a_settings_variable_is_refused(
        files: CampaignFiles, column: str, setting: str) -> None:
    # It used to override the setting in every letter, so each row could forge its own From.
    files.write_csv(f"email,{column}\nada@example.org,Mallory\n")
    with pytest.raises(InputError) as caught:
        RecipientList(CSV)
    assert str(caught.value) == (
        f"recipients.csv:1: column {column!r} is reserved: {{{{ {column} }}}} is {setting} "
        "from the settings, and a column must not change the sender per row; rename it")


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\u2029"], ids=["NEL", "LS", "PS"])
def test_unicode_line_separator_in_a_header_field_is_a_line_break(
        files: CampaignFiles, char: str) -> None:
    # Mail readers and str.splitlines break lines there; it used to pass as an ordinary letter.
    rows, problems = read(files, f"email,name\nada@example.org,Ada{char}Bcc: x\n",
                          single_line={"name"})
    assert rows == []
    assert problems == ["recipients.csv:2: name: contains a line break, but it is used in a mail "
                        "header; put it on one line"]


def test_a_column_used_as_an_address_must_hold_one_valid_address(files: CampaignFiles) -> None:
    rows, problems = read(files, "email,assistant\nada@example.org,Bob\n"
                                 "grace@example.net,\"aide@example.org, evil@example.com\"\n"
                                 "carol@example.com, Aide@Example.ORG \n"
                                 "dave@example.com,\n", addresses={"assistant"})
    assert [r.line for r in rows] == [4, 5]
    assert rows[0].fields["assistant"] == " Aide@Example.ORG "  # checked, kept as written
    assert problems == [
        "recipients.csv:2: assistant: 'Bob' is not a valid address (An email address must have "
        "an @-sign.), but the template uses this column as an address; put one address in it",
        "recipients.csv:3: assistant: 'aide@example.org, evil@example.com' is not a valid "
        "address (The part after the @-sign contains invalid characters: ',', '@', SPACE.), but "
        "the template uses this column as an address; put one address in it"]


def test_a_file_with_carriage_returns_alone_says_so(files: CampaignFiles) -> None:
    files.write_csv("email,name\rada@example.org,Ada\rgrace@example.net,Grace\r")
    with pytest.raises(InputError) as caught:
        RecipientList(CSV)
    assert str(caught.value) == ("recipients.csv:1: its lines end with a carriage return alone "
                                 "(an old Mac format); save it as CSV with Windows (CRLF) or "
                                 "Unix (LF) line ends")


def test_an_over_long_field_is_told_from_a_quote_left_open(files: CampaignFiles) -> None:
    long_field = "x" * 200_000
    _, problems = read(files, f"email,name\nada@example.org,{long_field}\n"
                              'grace@example.net,"Grace\n' + "more\n" * 30_000)
    assert problems[:2] == [  # (what follows the open quote is in pieces)
        "recipients.csv:2: a field here is longer than 128 kB; no letter needs that much: "
        "shorten it",
        "recipients.csv:3: a quoted field opens here and runs on for 26215 lines and more than "
        "128 kB without its closing quote; close it"]
