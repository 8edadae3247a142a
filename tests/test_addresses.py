"""Addresses: the fast path of `normalize_address` against email-validator, and the strict
parser of rendered address headers."""

from __future__ import annotations

import idna
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailer.addresses import InvalidAddress, Mailbox, normalize_address, parse_address_list

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"


def reference(text: str) -> str | None:
    """email-validator's verdict: the normalized address (an international domain as
    punycode, as mailer sends it; a local part that is not ASCII as it is, for SMTPUTF8), or
    None if it rejects the text."""
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    return result.ascii_email or f"{result.local_part}@{result.ascii_domain}"


def ours(text: str) -> str | None:
    try:
        return normalize_address(text)
    except InvalidAddress:
        return None


# --- normalize_address -------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "ada@example.org",
    "Ada.Lovelace@EXAMPLE.org",
    "o'connor+tag@sub.example.co.uk",
    "a@xn--bcher-kva.example",
    "a@bücher.example",
    "jürgen@example.org",
    "Ελένη@παράδειγμα.example",
])
def test_normalize_address_accepts_valid_addresses_as_email_validator_does(text: str) -> None:
    assert normalize_address(text) == reference(text)
    assert reference(text) is not None


def test_normalize_address_lower_cases_the_domain_but_not_the_local_part() -> None:
    assert normalize_address("Ada.Lovelace@Example.ORG") == "Ada.Lovelace@example.org"


@pytest.mark.parametrize("text", ["a@bücher.example", "a@XN--BCHER-KVA.example"])
def test_normalize_address_writes_an_international_domain_as_punycode(text: str) -> None:
    assert normalize_address(text) == "a@xn--bcher-kva.example"


@pytest.mark.parametrize("text", [
    "", "ada", "ada@", "@example.org", "ada@@example.org", "a..b@example.org", ".a@example.org",
    "a.@example.org", "ada@example", "ada@localhost", "ada@example.org.", "ada @example.org",
    "ada@exa mple.org", "ada@[127.0.0.1]", '"ada"@example.org', "Ada <ada@example.org>",
    "ada@-example.org", "ada@example.org\n",
    "a" * 64 + "@" + "b" * 189 + ".org",
])
def test_normalize_address_rejects_what_email_validator_rejects(text: str) -> None:
    assert reference(text) is None
    with pytest.raises(InvalidAddress):
        normalize_address(text)


@pytest.mark.parametrize("text", ["Postmaster@example.org", "INFO@example.org",
                                  "Abuse@Example.org", "webMaster@example.org"])
def test_normalize_address_lower_cases_rfc2142_mailbox_names_like_email_validator(
        text: str) -> None:
    # email-validator lower-cases these role names; the fast path used to keep their case.
    assert normalize_address(text) == reference(text) == text.lower()


def test_normalize_address_rejects_an_idna_domain_too_long_once_decoded() -> None:
    # 168 ASCII characters, but over 254 octets of UTF-8 once the domain is decoded: the fast
    # path used to accept what email-validator rejects ("too long after normalization").
    label = idna.encode("中" * 19).decode()
    text = "a" * 60 + "@" + ".".join([label] * 4) + ".com"
    assert len(text) <= 254
    assert reference(text) is None
    with pytest.raises(InvalidAddress):
        normalize_address(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_normalize_address_agrees_with_email_validator_on_arbitrary_text(text: str) -> None:
    assert ours(text) == reference(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ATEXT + ".@\"<> \t\\()[]:;,éü中\u0301", max_size=40))
def test_normalize_address_agrees_with_email_validator_on_address_like_text(text: str) -> None:
    assert ours(text) == reference(text)


_ROLE = st.sampled_from(["postmaster", "info", "abuse", "noc", "www", "ftp", "news", "sales"])
_LOCAL = st.one_of(
    st.text(alphabet=ATEXT, min_size=1, max_size=12),
    st.lists(st.text(alphabet=ATEXT, max_size=8), min_size=1, max_size=4).map(".".join),
    _ROLE.flatmap(lambda role: st.sampled_from([role, role.upper(), role.title()])),
    st.integers(60, 68).map(lambda n: "x" * n),
    st.text(alphabet=ATEXT + "é.\"\\ ", min_size=1, max_size=10),
)
_LABEL = st.one_of(
    st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9-_]{1,12}", fullmatch=True),
    st.text(alphabet="abcdéüßπ中", min_size=1, max_size=6),
    st.text(alphabet="abcéü中", min_size=1, max_size=25).map(
        lambda s: idna.encode(s).decode() if _idna_ok(s) else s),
    st.sampled_from(["xn--bcher-kva", "xn--zz", "XN--BCHER-KVA", "a" * 63, "a" * 64]),
)
_TLD = st.sampled_from(["org", "ORG", "com", "example", "test", "local", "localhost", "invalid",
                        "onion", "a", "c0m", "123", "xn--p1ai", "co.uk", ""])
_DOMAIN = st.builds(lambda labels, tld: ".".join([*labels, tld]),
                    st.lists(_LABEL, min_size=0, max_size=5), _TLD)


def _idna_ok(text: str) -> bool:
    try:
        idna.encode(text)
    except idna.IDNAError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(_LOCAL, st.sampled_from(["@", "@", "@", "@@", ""]), _DOMAIN)
@example("Postmaster", "@", "example.org")
@example("x" * 64, "@", ".".join(["a" * 63] * 3) + ".org")
def test_normalize_address_agrees_with_email_validator_on_near_valid_addresses(
        local: str, at: str, domain: str) -> None:
    text = local + at + domain
    assert ours(text) == reference(text)


# --- parse_address_list ------------------------------------------------------------------------


def test_parse_address_list_reads_names_and_bare_addresses() -> None:
    assert parse_address_list('Ada Lovelace <ada@Example.org>, "Hopper, Grace" <grace@example.net>,'
                              " plain@example.com") == [
        Mailbox("Ada Lovelace", "ada@example.org"),
        Mailbox("Hopper, Grace", "grace@example.net"),
        Mailbox("", "plain@example.com"),
    ]


def test_parse_address_list_keeps_a_comma_inside_a_quoted_name_in_one_mailbox() -> None:
    assert parse_address_list('"Lovelace, Ada" <ada@example.org>') == [
        Mailbox("Lovelace, Ada", "ada@example.org")]


def test_parse_address_list_unescapes_quotes_and_backslashes_in_a_quoted_name() -> None:
    assert parse_address_list(r'"Say \"hi\", \\o/" <ada@example.org>') == [
        Mailbox('Say "hi", \\o/', "ada@example.org")]


def test_parse_address_list_keeps_non_breaking_space_inside_a_name() -> None:
    # Used to fail an assertion (not InvalidAddress) on whitespace other than space and tab.
    assert parse_address_list("Ada\xa0Lovelace <ada@example.org>") == [
        Mailbox("Ada\xa0Lovelace", "ada@example.org")]


def test_parse_address_list_of_empty_text_is_empty() -> None:
    assert parse_address_list("") == []


@pytest.mark.parametrize("text", [
    "ada@example.org (Ada Lovelace)",
    "Ada (the first) <ada@example.org>",
], ids=["comment-after", "comment-in-name"])
def test_parse_address_list_rejects_comments(text: str) -> None:
    with pytest.raises(InvalidAddress, match="comments"):
        parse_address_list(text)


@pytest.mark.parametrize("text", [
    "friends: ada@example.org, grace@example.net;",
    "undisclosed-recipients:;",
    "friends:ada@example.org;",
])
def test_parse_address_list_rejects_groups(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address_list(text)


@pytest.mark.parametrize("text", ['"Ada <ada@example.org>', 'Ada "Lovelace <ada@example.org>'])
def test_parse_address_list_rejects_an_unclosed_quote(text: str) -> None:
    with pytest.raises(InvalidAddress, match="quote is not closed"):
        parse_address_list(text)


def test_parse_address_list_rejects_an_unclosed_angle_bracket() -> None:
    with pytest.raises(InvalidAddress, match="'<' without '>'"):
        parse_address_list("Ada <ada@example.org")


@pytest.mark.parametrize("text", [
    "ada@example.org grace@example.net",
    "<ada@example.org> <grace@example.net>",
    "Ada <ada@example.org> grace@example.net",
])
def test_parse_address_list_rejects_two_addresses_without_a_comma(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address_list(text)


@pytest.mark.parametrize("text", ["Ada <not-an-address>", "<>", "Ada <@route:ada@example.org>",
                                  "ada@example.org, bad@", "Ada > <ada@example.org>"])
def test_parse_address_list_rejects_an_invalid_address(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address_list(text)


_NAME = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0"),
                min_size=1, max_size=20)
_ADDRESS = st.sampled_from(["ada@example.org", "grace.hopper@example.net", "x+y@sub.example.com"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_NAME, _ADDRESS), min_size=1, max_size=4))
def test_parse_address_list_reads_back_quoted_names_exactly(
        boxes: list[tuple[str, str]]) -> None:
    text = ", ".join('"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{address}>'
                     for name, address in boxes)
    assert parse_address_list(text) == [Mailbox(name, address) for name, address in boxes]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=50)
       | st.text(alphabet='ab@.x ,"<>()\\:;\t\xa0\x0c', max_size=30))
def test_parse_address_list_returns_valid_mailboxes_or_raises_invalid_address(text: str) -> None:
    try:
        boxes = parse_address_list(text)
    except InvalidAddress:
        return
    for box in boxes:
        assert normalize_address(box.address) == box.address
