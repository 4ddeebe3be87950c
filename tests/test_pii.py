from collections import Counter
from dataclasses import FrozenInstanceError
from itertools import pairwise

import pytest

from migaki.data.pii import (
    PII_TYPES,
    PLACEHOLDERS,
    Finding,
    find_pii,
    luhn_valid,
    mask_pii,
    my_number_valid,
)

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA7bq98zNm3bKq1Vv0kHfqHf3oVQ2Z8Gk9\n"
    "Xv6a1Ckz0m4Cd1Zc2+F0d1Cw==\n"
    "-----END RSA PRIVATE KEY-----"
)


def found(text: str, pii_type: str) -> list[str]:
    """Texts of the findings of one type, searching for every type so overlaps resolve."""
    return [f.text for f in find_pii(text) if f.type == pii_type]


def only(text: str, pii_type: str) -> list[str]:
    """Texts found when searching for `pii_type` alone."""
    return [f.text for f in find_pii(text, [pii_type])]


def my_number_check_digit(body: str) -> int:
    """The official check digit, written independently of the module: weights for the 11
    digits from the right are 2..7 then 2..6."""
    weights = [2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6]
    remainder = sum(int(d) * w for d, w in zip(reversed(body), weights, strict=True)) % 11
    return 0 if remainder <= 1 else 11 - remainder


# --- API shape ---------------------------------------------------------------------------------


def test_types_and_placeholders():
    assert PII_TYPES == (
        "email",
        "phone",
        "credit_card",
        "my_number",
        "postal_code",
        "ip_address",
        "secret",
    )
    assert PLACEHOLDERS == {
        "email": "<EMAIL>",
        "phone": "<PHONE>",
        "credit_card": "<CREDIT_CARD>",
        "my_number": "<MY_NUMBER>",
        "postal_code": "<POSTAL_CODE>",
        "ip_address": "<IP_ADDRESS>",
        "secret": "<SECRET>",
    }


def test_finding_is_frozen_and_offsets_index_the_original_text():
    text = "電話は０９０－１２３４－５６７８、mail taro@example.com まで"
    findings = find_pii(text)
    assert [(f.type, f.text) for f in findings] == [
        ("phone", "０９０－１２３４－５６７８"),
        ("email", "taro@example.com"),
    ]
    assert all(text[f.start : f.end] == f.text for f in findings)
    with pytest.raises(FrozenInstanceError):
        findings[0].start = 0


@pytest.mark.parametrize("call", [find_pii, mask_pii])
def test_unknown_type_raises_naming_it_and_the_valid_ones(call):
    with pytest.raises(ValueError, match="phone_number") as err:
        call("taro@example.com", ["email", "phone_number"])
    assert all(name in str(err.value) for name in PII_TYPES)


def test_types_limit_the_search():
    text = "taro@example.com 090-1234-5678"
    assert [f.type for f in find_pii(text, ["phone"])] == ["phone"]
    assert [f.type for f in find_pii(text, "email")] == ["email"]  # a single name works too
    assert find_pii(text, []) == []


def test_empty_and_clean_text():
    assert find_pii("") == []
    text = "今日は良い天気です。The weather is nice today."
    assert mask_pii(text) == (text, Counter())


# --- email -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "email"),
    [
        ("Mail taro@example.com today.", "taro@example.com"),
        ("Send to jane.doe+newsletter@sub.example.org.", "jane.doe+newsletter@sub.example.org"),
        (
            "連絡先：taro.yamada@mail.example.co.jp までお願いします",
            "taro.yamada@mail.example.co.jp",
        ),
        ("<first_last@company-name.io>", "first_last@company-name.io"),
        ("メール ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ", "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
        ("09012345678@docomo.ne.jp", "09012345678@docomo.ne.jp"),  # one email, no phone
    ],
)
def test_email_found(text, email):
    assert find_pii(text) == [
        Finding("email", text.index(email), text.index(email) + len(email), email)
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Follow @openai for news",
        "@taro さん、ありがとうございます",
        "foo@bar is not an address",
        "user@localhost",
        "icon@2x.png and icon@3x.png",
        "meet @ 10am",
    ],
)
def test_email_refused(text):
    assert only(text, "email") == []


# --- phone -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "03-1234-5678",
        "06-1234-5678",
        "045-123-4567",
        "0120-123-456",
        "0570-123-456",
        "090-1234-5678",
        "080-1234-5678",
        "070-1234-5678",
        "050-1234-5678",
        "03 1234 5678",
        "03(1234)5678",
        "(03) 1234-5678",
        "09012345678",
        "０９０－１２３４－５６７８",
        "０３‐１２３４‐５６７８",
        "+81-90-1234-5678",
        "+81 3 1234 5678",
        "+81 (0)3 1234 5678",
        "+819012345678",
        "+1 415 555 0100",
        "+1 (415) 555-0100",
        "+44 20 7946 0958",
    ],
)
@pytest.mark.parametrize("template", ["お電話は{}までお願いします。", "Call {} today.", "{}"])
def test_phone_found(number, template):
    assert found(template.format(number), "phone") == [number]


def test_phone_drops_a_trailing_group_that_is_not_part_of_it():
    assert found("+44 20 7946 0958 2024年", "phone") == ["+44 20 7946 0958"]
    assert found("(tel: +81 3 1234 5678)", "phone") == ["+81 3 1234 5678"]


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-15 に出荷しました",
        "Released on 2024-01-15.",
        "03-12-2024",
        "価格は12,800円（税込）です",
        "It costs $1,234,567.00",
        "version 10.0.1 and 1.2.3",
        "In 2024 we grew.",
        "注文番号 012-3456-789",
        "order 1234-5678",
        "090ー1234ー5678",  # katakana long-vowel mark, not a hyphen
        "090-123-4567",  # a mobile number needs eleven digits
        "0312345678",  # ten digits without separators could be anything
        "123456789018",  # a My Number
        "4111 1111 1111 1111",  # a card number
        "4111-1111-1111-1111",
        "+5 points",
        "score +100",
        "10:30-12:00",
        "ID 03-1234-56789",
    ],
)
def test_phone_refused(text):
    assert only(text, "phone") == []


# --- credit card -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "378282246310005",
        "3782 822463 10005",  # Amex 4-6-5
        "6011 1111 1111 1117",
        "3530111333300000",  # JCB
        "４１１１　１１１１　１１１１　１１１１",
        "３７８２８２２４６３１０００５",
    ],
)
@pytest.mark.parametrize("template", ["カード番号：{} 有効期限 12/27", "Card {}, thanks", "{}"])
def test_credit_card_found(number, template):
    assert found(template.format(number), "credit_card") == [number]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails Luhn
        "4242424242424241",
        "5555-5555-5555-4445",
        "1700000000004",  # a millisecond timestamp that happens to pass Luhn
        "41111111111111111111",  # 20 digits
        "4111-1111-1111-1111-1111-1111",
        "123456789018",
    ],
)
def test_credit_card_refused(text):
    assert only(text, "credit_card") == []


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111 1111 1111 1111", True),
        ("4111111111111111", True),
        ("5555 5555 5555 4444", True),
        ("378282246310005", True),
        ("6011-1111-1111-1117", True),
        ("４１１１１１１１１１１１１１１１", True),
        ("4111 1111 1111 1112", False),
        ("378282246310006", False),
        ("", False),
        ("4111x1111", False),
    ],
)
def test_luhn_valid(digits, valid):
    assert luhn_valid(digits) is valid


# --- My Number ---------------------------------------------------------------------------------


def test_my_number_known_example():
    # 1 2 3 4 5 6 7 8 9 0 1: from the right 1*2 + 0*3 + 9*4 + 8*5 + 7*6 + 6*7 + 5*2 + 4*3
    # + 3*4 + 2*5 + 1*6 = 212; 212 mod 11 = 3; check digit 11 - 3 = 8.
    assert my_number_valid("123456789018")
    assert not my_number_valid("123456789012")


@pytest.mark.parametrize(
    "body",
    ["12345678901", "98765432109", "00000000001", "31415926535", "27182818284", "55555555555"],
)
def test_my_number_valid_only_with_the_right_check_digit(body):
    check = my_number_check_digit(body)
    assert my_number_valid(f"{body}{check}")
    assert [d for d in range(10) if my_number_valid(f"{body}{d}")] == [check]


@pytest.mark.parametrize(
    "digits", ["12345678901", "1234567890180", "12345678901a", "", "1234.5678.9018"]
)
def test_my_number_valid_refuses_wrong_shapes(digits):
    assert not my_number_valid(digits)


def test_my_number_valid_accepts_groups_and_full_width():
    assert my_number_valid("1234 5678 9018")
    assert my_number_valid("１２３４－５６７８－９０１８")


@pytest.mark.parametrize(
    "number",
    [
        "123456789018",
        "1234 5678 9018",
        "1234-5678-9018",
        "１２３４５６７８９０１８",
        "9876 5432 1093",
    ],
)
@pytest.mark.parametrize("template", ["マイナンバー：{}です", "My Number {}.", "{}"])
def test_my_number_found(number, template):
    assert found(template.format(number), "my_number") == [number]


@pytest.mark.parametrize(
    "text",
    [
        "注文番号 123456789012",  # fails the check digit
        "Order 1234-5678-9012 shipped",
        "1234567890180",  # a valid My Number inside a longer run of digits
        "01234567890189",
        "1234 5678 9018 7777",  # three groups of a longer spaced number
        "7777 1234 5678 9018",
        "1234-5678-9018-7",
    ],
)
def test_my_number_refused(text):
    assert only(text, "my_number") == []


# --- postal code -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("〒123-4567 東京都千代田区", "123-4567"),
        ("〒 123-4567", "123-4567"),
        ("〒1234567", "1234567"),
        ("〒１２３－４５６７", "１２３－４５６７"),
        ("郵便番号 123-4567", "123-4567"),
        ("郵便番号：123-4567", "123-4567"),
        ("郵便番号は1500002です", "1500002"),
    ],
)
def test_postal_code_found(text, code):
    assert found(text, "postal_code") == [code]


@pytest.mark.parametrize(
    "text",
    ["123-4567", "部品番号 123-4567", "〒123ー4567", "〒123-45678", "〒12-34567", "郵便 123-4567"],
)
def test_postal_code_refused(text):
    assert only(text, "postal_code") == []


# --- IP address --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "192.168.0.1",
        "10.0.0.255",
        "8.8.8.8",
        "１９２．１６８．０．１",
        "2001:db8::8a2e:370:7334",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "fe80::1",
        "fe80::1ff:fe23:4567:890a",
        "::ffff:192.0.2.1",
    ],
)
@pytest.mark.parametrize("template", ["サーバー {} に接続", "IP:{}", "host {}.", "{}"])
def test_ip_address_found(address, template):
    assert found(template.format(address), "ip_address") == [address]


@pytest.mark.parametrize(
    "text",
    [
        "999.1.1.1",
        "256.1.1.1",
        "version 1.2.3",
        "1.2.3.4.5",
        "v1.2.3.4",
        "12:30:45",
        "10:30 に集合",
        "00:1A:2B:3C:4D:5E",
        "x = a[1::2]",
        "Foo::Bar",
        "std::vector",
        "2024.01.15",
    ],
)
def test_ip_address_refused(text):
    assert only(text, "ip_address") == []


# --- secrets -----------------------------------------------------------------------------------

TOKENS = [
    "AKIAIOSFODNN7EXAMPLE",
    "ASIAY34FZKBOKMUTVV7A",
    "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8",
    "gho_" + "Zz09" * 9,
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "sk-" + "Ab1" * 16,
    "sk-proj-" + "Xy7_" * 10,
    "sk-ant-api03-" + "q" * 20 + "-" + "Q9" * 10,
    "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "xoxp-1234567890-0987654321-abcdef",
    "AIza" + "SyD" + "x1" * 16,
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "rk_live_" + "51H8a9XyZ0" * 2,
    "pk_live_" + "TYooMQauvdEDq54NiTphI7jx",
    JWT,
]


@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("template", ["key: {}", "トークンは {} です", "{}", "({})"])
def test_secret_token_found(token, template):
    assert found(template.format(token), "secret") == [token]


def test_private_key_block_masked_whole():
    text = f"鍵はこちら:\n{PEM}\n以上"
    assert found(text, "secret") == [PEM]
    assert mask_pii(text) == ("鍵はこちら:\n<SECRET>\n以上", Counter(secret=1))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('api_key = "abcd1234efgh5678"', "abcd1234efgh5678"),
        ("password: hunter2hunter2", "hunter2hunter2"),
        ("token=Zx9Qw8Er7Ty6.", "Zx9Qw8Er7Ty6"),
        ("secret: s3cr3t-value-42", "s3cr3t-value-42"),
        ("パスワード：P@ssw0rd!です", "P@ssw0rd!"),
        ("パスワードは「Tokyo2024!」です", "Tokyo2024!"),
        ("DB_PASSWORD=correct-horse-42", "correct-horse-42"),
        ('{"client_secret": "0a1b2c3d4e5f6a7b"}', "0a1b2c3d4e5f6a7b"),
        ("authToken: 'Zx9Qw8Er7Ty6Ui5O'", "Zx9Qw8Er7Ty6Ui5O"),
        ("Authorization: Bearer abcdef0123456789abcdef", "abcdef0123456789abcdef"),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("ＰＡＳＳＷＯＲＤ＝ｈｕｎｔｅｒ２ｈｕｎｔｅｒ２", "ｈｕｎｔｅｒ２ｈｕｎｔｅｒ２"),
    ],
)
def test_secret_assignment_masks_only_the_value(text, value):
    assert found(text, "secret") == [value]


@pytest.mark.parametrize(
    "text",
    [
        "Draw a quick sketch of the skills you need.",
        "The token is passed to the model one at a time.",
        "We tokenize the text and count tokens.",
        "トークン数を数えてからパスワードを変更してください。",
        "パスワードは定期的に変更してください",
        "password: short7",
        "tokenizer = AutoTokenizer.from_pretrained(name)",
        "pad_token = tokenizer.eos_token",
        'api_key = os.environ["OPENAI_API_KEY"]',
        "api_key = ${API_KEY}",
        "token: {{ secrets.GITHUB_TOKEN }}",
        "password = getpass.getpass()",
        "max_tokens: 1024",
        "task-management-system-overview-doc",  # "sk-" inside a word
        "risk-assessment-framework-2024-report",
        "AKIA" + "A" * 15,  # one character short
        "ghp_short",
    ],
)
def test_secret_refused(text):
    assert only(text, "secret") == []


# --- overlaps and masking ----------------------------------------------------------------------


def test_findings_are_sorted_and_disjoint():
    text = (
        "password: 09012345678 / 〒100-0001 / 4111-1111-1111-1111 / taro@example.com / "
        f"token={JWT} / 192.168.0.1 / +81 3 1234 5678"
    )
    findings = find_pii(text)
    assert [f.type for f in findings] == [
        "secret",  # same span as a phone number: the more specific type wins
        "postal_code",
        "credit_card",
        "email",
        "secret",
        "ip_address",
        "phone",
    ]
    assert all(a.end <= b.start for a, b in pairwise(findings))


@pytest.mark.parametrize(
    ("text", "masked", "counts"),
    [
        (
            "Contact taro@example.com or 090-1234-5678.",
            "Contact <EMAIL> or <PHONE>.",
            {"email": 1, "phone": 1},
        ),
        (
            "〒150-0002 東京都渋谷区、電話０３－１２３４－５６７８、カード4111 1111 1111 1111",
            "〒<POSTAL_CODE> 東京都渋谷区、電話<PHONE>、カード<CREDIT_CARD>",
            {"postal_code": 1, "phone": 1, "credit_card": 1},
        ),
        (
            f'config: api_key = "sk-proj-{"a1B2" * 8}" host=192.168.1.10 port 8080',
            'config: api_key = "<SECRET>" host=<IP_ADDRESS> port 8080',
            {"secret": 1, "ip_address": 1},
        ),
        (
            "マイナンバーは1234-5678-9018、注文番号は123456789012です。",
            "マイナンバーは<MY_NUMBER>、注文番号は123456789012です。",
            {"my_number": 1},
        ),
        (
            "Call +1 415 555 0100 or +44 20 7946 0958; on 2024-01-15 v1.2.3 shipped.",
            "Call <PHONE> or <PHONE>; on 2024-01-15 v1.2.3 shipped.",
            {"phone": 2},
        ),
        (
            "パスワード：Secr3t!Pass と api_key=abcdEFGH1234 を 2001:db8::1 に送信",
            "パスワード：<SECRET> と api_key=<SECRET> を <IP_ADDRESS> に送信",
            {"secret": 2, "ip_address": 1},
        ),
    ],
)
def test_mask_pii(text, masked, counts):
    assert mask_pii(text) == (masked, Counter(counts))


def test_mask_pii_keeps_the_key_name():
    text = 'api_key = "abcd1234efgh5678"'
    assert mask_pii(text) == ('api_key = "<SECRET>"', Counter(secret=1))


def test_mask_pii_only_the_given_types():
    text = "Contact taro@example.com or 090-1234-5678."
    assert mask_pii(text, ["email"]) == ("Contact <EMAIL> or 090-1234-5678.", Counter(email=1))


def test_masking_twice_changes_nothing_more():
    text = 'mail taro@example.com, password: "hunter2hunter2", 〒100-0001'
    once, counts = mask_pii(text)
    assert counts == Counter(email=1, secret=1, postal_code=1)
    assert mask_pii(once) == (once, Counter())
