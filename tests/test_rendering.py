"""Template rendering as the marketer and the customer see it (SPEC 5)."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from babel.numbers import format_currency
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import TemplateError
from orchestrator.rendering import Renderer, html_to_text

NBSP = "\u00a0"
YEKATERINBURG = ZoneInfo("Asia/Yekaterinburg")


def write(root: Path, relative: str, text: str) -> None:
    path = root / "templates" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def context(**customer: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "C-1",
        "first_name": "Анна",
        "name": "Анна Петрова",
        "bonus_balance": 1234,
        "birthday": None,
        "city": None,
    }
    base.update(customer)
    return {
        "customer": base,
        "offer": {"discount": 7, "valid_until": dt.date(2026, 12, 15)},
        "campaign": {"name": "promo"},
        "links": {"unsubscribe": "https://l.example.ru/u/abc.def", "cabinet": "https://l.example.ru/cabinet"},
        "now": dt.datetime(2026, 11, 20, 12, 0, tzinfo=YEKATERINBURG),
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    return tmp_path


@pytest.fixture
def renderer(root: Path) -> Renderer:
    return Renderer(root / "templates")


def render_sms(root: Path, source: str, ctx: dict[str, Any] | None = None, **options: Any) -> str:
    write(root, "sms/t.txt.j2", source)
    return Renderer(root / "templates").render("sms", "t", ctx or context(), **options).text


def sms_error(root: Path, source: str, ctx: dict[str, Any] | None = None) -> TemplateError:
    write(root, "sms/t.txt.j2", source)
    with pytest.raises(TemplateError) as caught:
        Renderer(root / "templates").render("sms", "t", ctx or context())
    return caught.value


# --- escaping -------------------------------------------------------------------------------


def test_html_is_autoescaped(root: Path, renderer: Renderer) -> None:
    write(root, "email/t.html.j2", "<p>Здравствуйте, {{ customer.name }}!</p>")
    rendered = renderer.render(
        "email", "t", context(name="<b>Tom & Jerry</b>"), subject="{{ customer.name }}"
    )
    assert rendered.html == "<p>Здравствуйте, &lt;b&gt;Tom &amp; Jerry&lt;/b&gt;!</p>"
    assert rendered.text == "Здравствуйте, <b>Tom & Jerry</b>!"
    assert rendered.subject == "<b>Tom & Jerry</b>"


@pytest.mark.parametrize("channel", ["sms", "phone"])
def test_text_templates_are_not_escaped(root: Path, renderer: Renderer, channel: str) -> None:
    write(root, f"{channel}/t.txt.j2", "Привет, {{ customer.name }}!")
    rendered = renderer.render(channel, "t", context(name="Tom & Jerry <3"))
    assert rendered.text == "Привет, Tom & Jerry <3!"


def test_email_text_template_is_not_escaped(root: Path, renderer: Renderer) -> None:
    write(root, "email/t.html.j2", "<p>{{ customer.name }}</p>")
    write(root, "email/t.txt.j2", "Text: {{ customer.name }}")
    rendered = renderer.render("email", "t", context(name="A & B"), subject="Hi")
    assert rendered.text == "Text: A & B"
    assert rendered.html == "<p>A &amp; B</p>"


# --- missing values -------------------------------------------------------------------------


@pytest.mark.parametrize("customer", [{"first_name": None}, {"first_name": "absent"}])
def test_missing_first_name_names_the_template_line_and_field(root: Path, customer: dict) -> None:
    ctx = context(**customer)
    if customer["first_name"] == "absent":
        del ctx["customer"]["first_name"]
    error = sms_error(root, "Добрый день!\n{{ customer.first_name }}, у нас скидки.", ctx)
    assert error.file == "templates/sms/t.txt.j2"
    assert error.line == 2
    assert "customer.first_name is missing" in error.message
    assert "default" in error.message
    assert str(error).startswith("templates/sms/t.txt.j2:2: ")


@pytest.mark.parametrize("value", [None, "absent"])
def test_default_replaces_missing_and_none(root: Path, value: str | None) -> None:
    ctx = context(first_name=value)
    if value == "absent":
        del ctx["customer"]["first_name"]
    assert render_sms(root, "{{ customer.first_name|default('клиент') }}!", ctx) == "клиент!"
    assert render_sms(root, "{{ customer.first_name|d('клиент') }}!", ctx) == "клиент!"


def test_default_keeps_falsy_values_unless_boolean(root: Path) -> None:
    ctx = context(bonus_balance=0)
    assert render_sms(root, "{{ customer.bonus_balance|default(5) }}", ctx) == "0"
    assert render_sms(root, "{{ customer.bonus_balance|default(5, true) }}", ctx) == "5"


def test_none_is_false_in_conditions(root: Path) -> None:
    source = "{% if customer.city %}Ждём в {{ customer.city }}{% else %}Ждём вас{% endif %}"
    assert render_sms(root, source, context(city=None)) == "Ждём вас"
    assert render_sms(root, source, context(city="Перми")) == "Ждём в Перми"


@pytest.mark.parametrize(
    "source",
    [
        "{{ customer.first_name ~ '!' }}",
        "{{ 'Привет, %s'|format(customer.first_name) }}",
        "{{ 'Привет, {}'.format(customer.first_name) }}",
        "{{ [customer.first_name, 'и ты']|join(' ') }}",
        "{{ 'Привет, %s' % customer.first_name }}",
    ],
)
def test_none_never_prints_as_the_word_none(root: Path, source: str) -> None:
    error = sms_error(root, source, context(first_name=None))
    assert "customer.first_name is missing" in error.message


def test_misspelt_field_is_an_error_even_in_a_condition(root: Path) -> None:
    error = sms_error(root, "{% if customer.frist_name %}x{% endif %}")
    assert "customer.frist_name" in error.message
    assert error.line == 1


# --- sandbox and size bounds ----------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ customer.__class__ }}",
        "{{ offer.update({'discount': 99}) }}",
        "{{ customer.pop('first_name') }}",
    ],
)
def test_sandbox_refuses_internals_and_mutation(root: Path, source: str) -> None:
    ctx = context()
    error = sms_error(root, source, ctx)
    assert error.file == "templates/sms/t.txt.j2" and error.line == 1
    assert "Traceback" not in str(error) and 'File "' not in str(error)
    assert ctx["offer"]["discount"] == 7 and ctx["customer"]["first_name"] == "Анна"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ ['x'] * 10**9 }}",
        "{{ 'x'.center(10**9) }}",
        "{{ 'x'|center(10**9) }}",
        "{{ '%999999999d' % 1 }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{% set s = 'x' * 1000 %}{{ s|replace('x', s)|replace('x', s) }}",
        "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}",
    ],
)
def test_huge_output_is_refused_before_it_is_built(root: Path, source: str) -> None:
    write(root, "phone/t.txt.j2", source)
    renderer = Renderer(root / "templates", max_output_bytes=64 * 1024)
    with pytest.raises(TemplateError) as caught:
        renderer.render("phone", "t", context())
    assert caught.value.line == 1


def test_output_limit_counts_bytes(root: Path) -> None:
    write(root, "phone/t.txt.j2", "{% for i in range(300) %}жжжжжжжжжж{% endfor %}")
    assert len(Renderer(root / "templates").render("phone", "t", context()).text) == 3000
    with pytest.raises(TemplateError, match="larger than 5 KB"):
        Renderer(root / "templates", max_output_bytes=5 * 1024).render("phone", "t", context())


def test_ordinary_string_operations_still_work(root: Path) -> None:
    source = (
        "{{ '=' * 3 }}{{ 'ab' + 'c' }}{{ '%05d'|format(42) }}{{ '{:,}'.format(1234567) }}"
        "{{ 'x'|center(3) }}|{{ 'abc'|replace('b', 'B') }}{{ [1, 2]|join('-') }}{{ 2 ** 10 }}"
        "{{ '%d' % 123456789 }}"
    )
    assert render_sms(root, source) == "===abc000421,234,567 x |aBc1-21024123456789"


# --- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ 1234.5|money }}", f"1{NBSP}234,50{NBSP}₽"),
        ("{{ 1234.5|money(0) }}", f"1{NBSP}235{NBSP}₽"),
        ("{{ 1234.5|money(digits=0) }}", f"1{NBSP}235{NBSP}₽"),
        ("{{ 0.005|money }}", f"0,01{NBSP}₽"),
        ("{{ 2.675|money }}", f"2,68{NBSP}₽"),
        ("{{ 1000000|money }}", f"1{NBSP}000{NBSP}000,00{NBSP}₽"),
        ("{{ '1234,5'|money }}", f"1{NBSP}234,50{NBSP}₽"),
        ("{{ -5|money }}", f"-5,00{NBSP}₽"),
        ("{{ customer.bonus_balance|money }}", f"1{NBSP}234,00{NBSP}₽"),
    ],
)
def test_money(root: Path, source: str, expected: str) -> None:
    assert render_sms(root, source) == expected


_FILTERS = Renderer(Path("unused") / "templates")._locale_filters  # no file is read


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=-(10**12), max_value=10**12, places=4), st.integers(0, 4))
def test_money_is_exactly_what_babel_prints(value: Decimal, digits: int) -> None:
    pattern = f"#,##0{'.' + '0' * digits if digits else ''}{NBSP}¤"
    rounded = value.quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)
    expected = format_currency(rounded, "RUB", format=pattern, locale="ru_RU", currency_digits=False)
    assert _FILTERS.money(value, digits) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, "1 бонус"),
        (2, "2 бонуса"),
        (4, "4 бонуса"),
        (5, "5 бонусов"),
        (0, "0 бонусов"),
        (11, "11 бонусов"),
        (12, "12 бонусов"),
        (21, "21 бонус"),
        (22, "22 бонуса"),
        (111, "111 бонусов"),
        (1234, f"1{NBSP}234 бонуса"),
        (-1, "-1 бонус"),
        (1.5, "1,5 бонуса"),
        (2.0, "2 бонуса"),
    ],
)
def test_plural(root: Path, n: Any, expected: str) -> None:
    ctx = context(bonus_balance=n)
    assert render_sms(root, "{{ customer.bonus_balance|plural('бонус', 'бонуса', 'бонусов') }}", ctx) == expected


def test_plural_word_only_and_placeholder(root: Path) -> None:
    ctx = context(bonus_balance=21)
    assert render_sms(root, "{{ 5|plural('день', 'дня', 'дней', with_number=false) }}", ctx) == "дней"
    source = "{{ customer.bonus_balance|plural('остался {n} день', 'осталось {n} дня', 'осталось {n} дней') }}"
    assert render_sms(root, source, ctx) == "остался 21 день"


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        (dt.date(2026, 12, 5), "d MMMM", "5 декабря"),
        (dt.date(2026, 12, 5), "d MMMM y", "5 декабря 2026"),
        ("2026-12-15", "d MMMM", "15 декабря"),
        ("2026-12-15", "dd.MM.y", "15.12.2026"),
        # 22:30 UTC on 5 December is 03:30 on 6 December in Yekaterinburg (UTC+5)
        (dt.datetime(2026, 12, 5, 22, 30, tzinfo=dt.timezone.utc), "d MMMM HH:mm", "6 декабря 03:30"),
        ("2026-12-05T22:30:00+00:00", "d MMMM HH:mm", "6 декабря 03:30"),
        # naive = already the customer's wall clock
        (dt.datetime(2026, 12, 5, 22, 30), "d MMMM HH:mm", "5 декабря 22:30"),
    ],
)
def test_date_in_the_customers_zone(root: Path, value: Any, fmt: str, expected: str) -> None:
    ctx = context(birthday=value)
    assert render_sms(root, f"{{{{ customer.birthday|date('{fmt}') }}}}", ctx) == expected


def test_date_of_none_is_an_error_unless_defaulted(root: Path) -> None:
    ctx = context(birthday=None)
    error = sms_error(root, "{{ customer.birthday|date('d MMMM') }}", ctx)
    assert "customer.birthday is missing" in error.message
    assert render_sms(root, "{{ customer.birthday|date('d MMMM')|default('скоро') }}", ctx) == "скоро"


def test_bad_date_string_is_a_clear_error(root: Path) -> None:
    error = sms_error(root, "{{ 'завтра'|date('d MMMM') }}")
    assert "not a date" in error.message and error.line == 1


def test_offer_date_from_yaml(root: Path) -> None:
    assert render_sms(root, "до {{ offer.valid_until|date('d MMMM') }}") == "до 15 декабря"


# --- email ----------------------------------------------------------------------------------


HTML = """<html><head><title>{% block subject %}{{ customer.first_name }}, скидка & подарок{% endblock %}</title>
<style>p { color: red }</style></head>
<body>
<h1>Здравствуйте, {{ customer.first_name }}!</h1>
<p>Скидка {{ offer.discount }}% &mdash; до {{ offer.valid_until|date('d MMMM') }}.</p>
<ul>
  <li>Диваны</li>
  <li>Кресла</li>
</ul>
<p><a href="https://shop.example.ru/sale">Смотреть</a> <a href="https://shop.example.ru">https://shop.example.ru</a><br>
<a href="{{ links.unsubscribe }}">Отписаться</a></p>
</body></html>
"""


def test_subject_from_block_and_text_from_html(root: Path, renderer: Renderer) -> None:
    write(root, "email/promo.html.j2", HTML)
    rendered = renderer.render("email", "promo", context())
    assert rendered.subject == "Анна, скидка & подарок"
    assert rendered.text == (
        "Здравствуйте, Анна!\n\n"
        "Скидка 7% — до 15 декабря.\n\n"
        "- Диваны\n- Кресла\n\n"
        "Смотреть (https://shop.example.ru/sale) https://shop.example.ru\n"
        "Отписаться (https://l.example.ru/u/abc.def)"
    )
    assert "<title>Анна, скидка & подарок</title>" in (rendered.html or "")


def test_campaign_subject_wins_over_block(root: Path, renderer: Renderer) -> None:
    write(root, "email/promo.html.j2", HTML)
    rendered = renderer.render("email", "promo", context(), subject="{{ customer.first_name }}, мы сохранили цену")
    assert rendered.subject == "Анна, мы сохранили цену"


@pytest.mark.parametrize("subject", [None, "{{ customer.first_name }}, скидка"])
def test_newlines_cannot_reach_the_subject(root: Path, renderer: Renderer, subject: str | None) -> None:
    write(root, "email/promo.html.j2", HTML)
    evil = "Анна\r\nBcc: victim@example.com\n\nbody\u2028x\x0b"
    rendered = renderer.render("email", "promo", context(first_name=evil), subject=subject)
    assert rendered.subject is not None
    assert not any(char in rendered.subject for char in "\r\n\u2028\x0b")
    assert rendered.subject.startswith("Анна Bcc: victim@example.com body x")


def test_email_without_any_subject_is_an_error(root: Path, renderer: Renderer) -> None:
    write(root, "email/plain.html.j2", "<p>hi</p>")
    with pytest.raises(TemplateError, match="no subject") as caught:
        renderer.check("email", "plain")
    assert caught.value.file == "templates/email/plain.html.j2"
    renderer.check("email", "plain", subject="Hi")


def test_subject_errors_point_at_the_subject(root: Path, renderer: Renderer) -> None:
    write(root, "email/plain.html.j2", "<p>hi</p>")
    with pytest.raises(TemplateError) as caught:
        renderer.render("email", "plain", context(first_name=None), subject="{{ customer.first_name }}")
    assert caught.value.field == "subject"
    assert "customer.first_name" in caught.value.message


def test_html_to_text_decodes_entities_and_drops_scripts() -> None:
    html = "<script>alert(1)</script><p>A&nbsp;&amp;&nbsp;B &lt;3</p><img alt='logo'><a href='mailto:x@y.ru'>написать</a>"
    assert html_to_text(html) == f"A{NBSP}&{NBSP}B <3\n\nlogo написать (x@y.ru)"


# --- SMS ------------------------------------------------------------------------------------


def test_sms_is_trimmed_and_counted(root: Path, renderer: Renderer) -> None:
    write(root, "sms/t.txt.j2", "\n  {% if true %}\nHello {{ customer.id }}\n{% endif %}\n\n")
    rendered = renderer.render("sms", "t", context())
    assert rendered.text == "Hello C-1"
    assert rendered.sms is not None
    assert (rendered.sms.encoding, rendered.sms.units, rendered.sms.parts) == ("GSM-7", 9, 1)


def test_sms_parts_cap(root: Path, renderer: Renderer) -> None:
    write(root, "sms/long.txt.j2", "{{ customer.first_name }}, " + "я" * 130)
    with pytest.raises(TemplateError) as caught:
        renderer.render("sms", "long", context())
    assert caught.value.message == "the SMS is 3 parts (UCS-2, 136 characters); the campaign allows 2"
    assert caught.value.file == "templates/sms/long.txt.j2"
    rendered = renderer.render("sms", "long", context(), sms_max_parts=3)
    assert rendered.sms is not None and rendered.sms.parts == 3


def test_webhook_falls_back_to_sms_then_email(root: Path, renderer: Renderer) -> None:
    write(root, "sms/a.txt.j2", "SMS {{ customer.id }}")
    write(root, "email/b.html.j2", "<p>Mail {{ customer.id }}</p>")
    assert renderer.render("webhook", "a", context()).text == "SMS C-1"
    by_email = renderer.render("webhook", "b", context())
    assert (by_email.text, by_email.html) == ("Mail C-1", "<p>Mail C-1</p>")
    write(root, "webhook/a.txt.j2", "Hook {{ customer.id }}")
    assert Renderer(root / "templates").render("webhook", "a", context()).text == "Hook C-1"


# --- compiling ------------------------------------------------------------------------------


def test_templates_compile_once(root: Path, renderer: Renderer, monkeypatch: pytest.MonkeyPatch) -> None:
    write(root, "sms/t.txt.j2", "Hi {{ customer.first_name }}")
    write(root, "email/t.html.j2", "<p>{{ customer.first_name }}</p>")
    compiled: list[str] = []
    for env in (renderer._text_env, renderer._html_env):
        original = env.compile
        monkeypatch.setattr(env, "compile", lambda *a, _o=original, **k: compiled.append(a[1] if len(a) > 1 else None) or _o(*a, **k))
    for _ in range(1000):
        renderer.render("sms", "t", context())
        renderer.render("email", "t", context(), subject="Hi {{ customer.first_name }}")
    assert len(compiled) == 3  # None is the subject, compiled from a string
    assert set(compiled) == {"email/t.html.j2", "sms/t.txt.j2", None}


def test_syntax_error_names_file_and_line(root: Path, renderer: Renderer) -> None:
    write(root, "sms/broken.txt.j2", "Привет\n{% if customer.first_name %}\n{{ customer.first_name }\n")
    for attempt in (lambda: renderer.check("sms", "broken"), lambda: renderer.render("sms", "broken", context())):
        with pytest.raises(TemplateError) as caught:
            attempt()
        assert caught.value.file == "templates/sms/broken.txt.j2"
        assert caught.value.line == 3
        assert "syntax error" in caught.value.message


def test_check_finds_a_broken_include(root: Path, renderer: Renderer) -> None:
    write(root, "sms/outer.txt.j2", "Hi\n{% include 'sms/parts/inner.txt.j2' %}")
    write(root, "sms/parts/inner.txt.j2", "x\n{{ oops(}}")
    with pytest.raises(TemplateError) as caught:
        renderer.check("sms", "outer")
    assert (caught.value.file, caught.value.line) == ("templates/sms/parts/inner.txt.j2", 2)


def test_error_inside_an_include_points_at_the_included_file(root: Path, renderer: Renderer) -> None:
    write(root, "sms/outer.txt.j2", "Hi\n{% include 'sms/parts/name.txt.j2' %}")
    write(root, "sms/parts/name.txt.j2", "\n\n{{ customer.first_name }}")
    with pytest.raises(TemplateError) as caught:
        renderer.render("sms", "outer", context(first_name=None))
    assert (caught.value.file, caught.value.line) == ("templates/sms/parts/name.txt.j2", 3)


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("sms", "templates/sms/nope.txt.j2"),
        ("email", "templates/email/nope.html.j2"),
        ("phone", "templates/phone/nope.txt.j2"),
        ("webhook", "templates/webhook/nope.txt.j2"),
    ],
)
def test_missing_template_names_the_expected_path(renderer: Renderer, channel: str, expected: str) -> None:
    with pytest.raises(TemplateError, match=expected):
        renderer.check(channel, "nope")


@pytest.mark.parametrize("name", ["../secret", "a/b", "", ".hidden"])
def test_template_names_cannot_leave_the_folder(renderer: Renderer, name: str) -> None:
    with pytest.raises(TemplateError, match="not valid"):
        renderer.check("sms", name)


def test_plural_agrees_with_the_printed_number_for_database_decimals(root: Path) -> None:
    ctx = context(bonus_balance=Decimal("1250.00"))
    source = "{{ customer.bonus_balance|plural('бонус', 'бонуса', 'бонусов') }}"
    assert render_sms(root, source, ctx) == f"1{NBSP}250 бонусов"


def test_subject_keeps_no_break_spaces(root: Path, renderer: Renderer) -> None:
    write(root, "email/t.html.j2", "<p>x</p>")
    rendered = renderer.render("email", "t", context(), subject="Баланс {{ customer.bonus_balance|money(0) }}")
    assert rendered.subject == f"Баланс 1{NBSP}234{NBSP}₽"


def test_template_that_is_not_utf8_is_a_clear_error(root: Path, renderer: Renderer) -> None:
    (root / "templates" / "sms").mkdir()
    (root / "templates" / "sms" / "cp.txt.j2").write_bytes("Привет".encode("cp1251"))
    with pytest.raises(TemplateError, match="not UTF-8") as caught:
        renderer.check("sms", "cp")
    assert caught.value.file == "templates/sms/cp.txt.j2"


def test_a_template_without_loops_is_still_bounded(root: Path) -> None:
    """Loop-free templates are joined at once (the fast path); the limit still holds."""
    write(root, "phone/t.txt.j2", "{{ customer.note }}{{ customer.note }}{{ customer.note }}")
    ctx = context()
    ctx["customer"] = {**ctx["customer"], "note": "ж" * 1000}
    assert len(Renderer(root / "templates").render("phone", "t", ctx).text) == 3000
    with pytest.raises(TemplateError, match="larger than 5 KB"):
        Renderer(root / "templates", max_output_bytes=5 * 1024).render("phone", "t", ctx)


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("{{ customer.first_name|default('x') }} {{ customer['city'] }} {{ offer.discount }}", {"first_name", "city"}),
        ("{% if customer.bonus_balance %}{{ customer.bonus_balance|money }}{% endif %}", {"bonus_balance"}),
        ("{% for key in customer %}{{ key }}{% endfor %}", None),
        ("{{ customer|string }}", None),
        ("{% set c = customer %}{{ c.name }}", None),
        ("{{ customer[offer.field] }}", None),
        ("{% include 'sms/other.txt.j2' %}", None),
    ],
)
def test_customer_fields_lists_what_a_template_reads(root: Path, source: str, fields: set[str] | None) -> None:
    """The planner fetches only these fields; anything it cannot see through means all of them."""
    write(root, "sms/other.txt.j2", "{{ customer.name }}")
    write(root, "sms/t.txt.j2", source)
    found = Renderer(root / "templates").customer_fields("sms", "t")
    assert (set(found) if found is not None else None) == fields
