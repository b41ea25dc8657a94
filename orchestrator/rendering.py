"""Rendering the marketer's Jinja2 templates for one recipient (SPEC 5).

A template is written by a marketer and filled with customer data, so both sides are untrusted:

* the template runs in a sandbox (no Python internals, no mutation of the shared context, bounded
  output: string repetition, concatenation, padding, `replace`, `join`, `range()` and the final
  output are all size-checked *before* a giant string is built);
* a value the template prints but the customer does not have (a missing key *or* a None from an
  empty column) is an error naming the expression, the template file and line, never an empty
  string or the word "None"; `default` replaces missing and None values;
* HTML email is autoescaped; SMS, text parts, call scripts and subjects are not (two environments:
  `select_autoescape` does not apply to `from_string`).  A subject never contains a line break, so
  customer data cannot inject a mail header.

Every template is compiled once per `Renderer` and kept; rendering runs the compiled code only.

Choices where the contract is silent:

* `plural` prints the number with the word (`5|plural('бонус','бонуса','бонусов')` → `5 бонусов`,
  as in SPEC 5); `with_number=false` prints the word only; a form containing `{n}` places the
  number itself (`'остался {n} день'`).  Fractions use the CLDR category "other", which in Russian
  takes the genitive singular, i.e. the *few* form: `1.5` → `1,5 бонуса`.
* `date` accepts date, datetime, ISO strings and None.  Aware datetimes are converted to the zone
  of the context's `now` (the customer's zone); naive datetimes and ISO strings without an offset
  are taken as wall-clock time already in the customer's zone (that is how a marketer writes them
  in YAML).  `money`, `date` and `plural` return None for None, so `|default` may follow them.
* `webhook` renders `templates/webhook/<name>.txt.j2` if it exists, else the SMS template, else the
  email (text part, HTML and subject).  No SMS parts cap applies to a webhook.
* An email's subject is the campaign's `subject` (rendered without escaping) or the HTML template's
  `{% block subject %}`; the block also renders in place, so put it inside `<title>`.  An email with
  neither is a template error.
* The text part derived from HTML keeps link targets as `text (url)`, drops `<head>`, `<style>` and
  `<script>`, turns list items into `- ` lines and collapses whitespace.
* CPU time is not bounded here (nested loops over customer data can be slow); loops over `range()`
  share a budget of iterations per render, and the output and every intermediate string are bounded
  by `max_output_bytes`.
"""

from __future__ import annotations

import contextvars
import copy
import datetime as dt
import html
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any

from babel import Locale
from babel.dates import format_date, format_datetime, parse_pattern
from babel.numbers import NumberPattern, get_currency_symbol
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
    pass_context,
    pass_eval_context,
)
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.filters import sync_do_join
from jinja2.meta import find_referenced_templates
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, Undefined, new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg
from markupsafe import soft_str

from orchestrator.errors import TemplateError
from orchestrator.sms_parts import SmsInfo, sms_info

CHANNELS = ("sms", "email", "phone", "webhook")
RANGE_BUDGET = 100_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Rendered:
    channel: str
    text: str
    subject: str | None = None
    html: str | None = None
    sms: SmsInfo | None = None


class _MissingValue(Exception):
    """A None (an empty customer field) reached the output."""


class _TooLarge(SecurityError):
    """A string, list or the output would exceed the size limit."""


# ----------------------------------------------------------------------------------------------
# The sandbox


_RANGE_LEFT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("range_left")


def _budgeted_range(*args: int) -> range:
    """`range()` whose iterations, over all calls of one render, stay within RANGE_BUDGET."""
    rng = range(*args)
    left = _RANGE_LEFT.get(None)
    if left is None:
        left = [RANGE_BUDGET]
        _RANGE_LEFT.set(left)
    left[0] -= len(rng)
    if left[0] < 0:
        raise _TooLarge(f"range() loops run more than {RANGE_BUDGET} times in one message")
    return rng


def _finalize(value: Any) -> Any:
    if value is None:
        raise _MissingValue()
    return value


def _check_not_none(values: Any) -> None:
    for value in values:
        if value is None:
            raise _MissingValue()


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_DIGITS = re.compile(r"\d+")


class _CodeGenerator(CodeGenerator):
    """`~` concatenation: each operand through `finalize` (None is not printed as "None"), and the
    result through the size check (doubling a string in a loop stops at the limit)."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"environment.checked_length({func_name}((")
        for arg in node.nodes:
            self.write("environment.finalize(")
            self.visit(arg, frame)
            self.write("), ")
        self.write(")))")


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, plus size limits on everything that can multiply a string."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    _unsafe_str_methods = frozenset({"translate", "maketrans", "expandtabs"})

    def __init__(self, *, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars
        self.globals["range"] = _budgeted_range
        self.globals["lipsum"] = self._bounded_lipsum
        for name in ("replace", "center", "indent", "wordwrap", "truncate"):
            self.filters[name] = self._bounded_filter(self.filters[name], name)
        self.filters["join"] = self._join_filter()
        self.filters["format"] = self._format_filter()

    # --- limits ---

    def _bounded_lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        """Jinja's `lipsum`, refused before it builds more text than a message may hold
        (`lipsum(10**6)` would otherwise run for minutes)."""
        from jinja2.utils import generate_lorem_ipsum

        self.check_ints((n, min, max))
        if type(n) is int and type(max) is int:
            self.check_size(n * max * 16)  # words are at most 14 letters, plus space and comma
        return self.checked_length(str(generate_lorem_ipsum(n, html, min, max)))

    def check_size(self, size: int) -> None:
        if size > self.max_chars:
            raise _TooLarge(f"the template builds a text longer than {self.max_chars} characters")

    def checked_length(self, text: str) -> str:
        self.check_size(len(text))
        return text

    def check_ints(self, values: Any) -> None:
        for value in values:
            if type(value) is int and abs(value) > self.max_chars:
                raise _TooLarge(f"the number {value} is too large for a width or a count here")

    def check_percent_format(self, fmt: str, args: Any) -> None:
        star = False
        for match in _PERCENT_SPEC.finditer(fmt):
            for number in match.groups():
                if number == "*":
                    star = True
                elif number:
                    self.check_ints((int(number),))
        values = args if isinstance(args, tuple) else (args,)
        if isinstance(args, Mapping):
            values = tuple(args.values())
        _check_not_none(values)
        if star:
            self.check_ints(values)

    def check_brace_format(self, fmt: str, args: Any, kwargs: Mapping[str, Any]) -> None:
        try:
            fields = list(string.Formatter().parse(fmt))
        except ValueError:
            return
        nested = False
        for _, _, spec, _ in fields:
            if spec:
                nested = nested or "{" in spec
                self.check_ints(int(number) for number in _FORMAT_DIGITS.findall(spec))
        _check_not_none(args)
        _check_not_none(kwargs.values())
        if nested:
            self.check_ints(args)
            self.check_ints(kwargs.values())

    # --- sandbox hooks ---

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`customer.name` on a plain dict is its item whatever the sandbox would check: the
        common case (every field of every message) skips the failed attribute lookup and the
        safety check the parent makes first.  Names of dict methods keep the parent's path."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in self._unsafe_str_methods:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            if isinstance(left, (str, list, tuple)) and type(right) is int:
                self.check_size(len(left) * right)
            elif isinstance(right, (str, list, tuple)) and type(left) is int:
                self.check_size(len(right) * left)
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                self.check_size(len(left) + len(right))
        elif operator == "**":
            if type(left) is int and type(right) is int and abs(left) > 1 and right > 64:
                if right * max(abs(left).bit_length(), 1) > 4096:
                    raise _TooLarge(f"{left} ** {right} is too large a number")
        elif operator == "%" and isinstance(left, str):
            self.check_percent_format(left, right)
        result = self.binop_table[operator](left, right)
        if isinstance(result, (str, list, tuple)):
            self.check_size(len(result))
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            __self._estimate_str_method(owner, getattr(__obj, "__name__", ""), args)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, list, tuple)):
            __self.check_size(len(result))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt: str = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            self.check_brace_format(fmt, args, kwargs)
            result = wrapper(*args, **kwargs)
            self.check_size(len(result))
            return result

        return bounded

    # --- amplifying operations ---

    def _estimate_str_method(self, text: str, method: str, args: tuple[Any, ...]) -> None:
        if method in ("center", "ljust", "rjust", "zfill"):
            self.check_ints(args[:1])
        elif method == "replace" and len(args) >= 2:
            self._estimate_replace(text, args[0], args[1])
        elif method == "join" and args:
            items = args[0]
            if isinstance(items, (list, tuple)):
                self.check_size(len(text) * len(items))

    def _estimate_replace(self, text: Any, old: Any, new: Any) -> None:
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
            occurrences = text.count(old) if old else len(text) + 1
            self.check_size(len(text) + occurrences * len(new))

    def _bounded_filter(self, original: Callable[..., Any], name: str) -> Callable[..., Any]:
        passes = _PassArg.from_obj(original) is not None

        def bounded(*call_args: Any, **kwargs: Any) -> Any:
            head, (value, *args) = (call_args[:1], call_args[1:]) if passes else ((), call_args)
            if name in ("center", "indent"):
                self.check_ints(args[:1])
                self.check_ints((kwargs.get("width"),))
            if name == "replace" and len(args) >= 2:
                self._estimate_replace(str(value), args[0], args[1])
            elif name == "indent":
                width = args[0] if args else kwargs.get("width", 4)
                if isinstance(width, int):
                    self.check_size(len(str(value)) + (str(value).count("\n") + 1) * width)
                elif isinstance(width, str):
                    self.check_size(len(str(value)) + (str(value).count("\n") + 1) * len(width))
            elif name == "wordwrap":
                wrapstring = kwargs.get("wrapstring", args[2] if len(args) > 2 else "\n")
                width = args[0] if args else kwargs.get("width", 79)
                if isinstance(wrapstring, str) and isinstance(width, int) and width > 0:
                    length = len(str(value))
                    self.check_size(length + (length // width + 1) * len(wrapstring))
            result = original(*head, value, *args, **kwargs)
            if isinstance(result, str):
                self.check_size(len(result))
            return result

        bounded.__name__ = name
        if passes:
            bounded.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
        return bounded

    def _join_filter(self) -> Callable[..., str]:
        @pass_eval_context
        def join(eval_ctx: EvalContext, value: Any, d: str = "", attribute: Any = None) -> str:
            items = list(value)
            if attribute is None:
                _check_not_none(items)
            self.check_size(len(str(d)) * len(items))
            result = sync_do_join(eval_ctx, items, d, attribute)
            self.check_size(len(result))
            return result

        return join

    def _format_filter(self) -> Callable[..., str]:
        def format_(value: Any, *args: Any, **kwargs: Any) -> str:
            if args and kwargs:
                raise TypeError("format: give either positional or keyword arguments, not both")
            self.check_percent_format(str(value), kwargs or args)
            result = soft_str(value) % (kwargs or args)
            self.check_size(len(result))
            return result

        return format_


# ----------------------------------------------------------------------------------------------
# Filters for the customers' language


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja's `default`, which also replaces None (an empty customer field)."""
    if value is None or isinstance(value, Undefined):
        return default_value
    if boolean and not value:
        return default_value
    return value


def _to_decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip().replace("\u00a0", "").replace(" ", "").replace(",", "."))
        except InvalidOperation:
            raise ValueError(f"{what}: {value!r} is not a number") from None
    else:
        raise TypeError(f"{what}: expected a number, got {type(value).__name__}")
    if not number.is_finite():
        raise ValueError(f"{what}: {value!r} is not a number")
    return number


class _LocaleFilters:
    """`money`, `plural`, `date` and `number` for one locale and currency, babel objects cached."""

    def __init__(self, locale: str, currency: str) -> None:
        try:
            self.locale = Locale.parse(locale)
        except (ValueError, TypeError) as exc:
            raise TemplateError(f"unknown locale {locale!r}: {exc}") from None
        self.currency = currency
        self._currency_patterns: dict[int, NumberPattern] = {}
        self._decimal_pattern = self.locale.decimal_formats[None]
        self._date_patterns: dict[str, Any] = {}
        self._dates: dict[tuple[Any, ...], str] = {}
        self._plural_cache: dict[Any, str] = {}
        self._quanta = {digits: Decimal(1).scaleb(-digits) for digits in range(5)}
        symbols = self.locale.number_symbols["latn"]
        self._separators = str.maketrans({",": symbols["group"], ".": symbols["decimal"]})
        symbol = get_currency_symbol(currency, self.locale)
        standard = self.locale.currency_formats["standard"]
        self._money_affixes = (standard.prefix[0].replace("¤", symbol),
                               standard.suffix[0].replace("¤", symbol))
        self._fast_money = standard.grouping == (3, 3) and self._fast_path_agrees()

    def filters(self) -> dict[str, Callable[..., Any]]:
        @pass_context
        def date(context: Context, value: Any, format: str = "d MMMM y") -> str | None:
            return self.date(context, value, format)

        return {
            "money": self.money,
            "plural": self.plural,
            "date": date,
            "number": self.number,
            "default": _default,
            "d": _default,
        }

    def money(self, value: Any, digits: int = 2) -> str | None:
        """Babel's currency format, rounded half up; plain Python formatting where it agrees."""
        if value is None or isinstance(value, Undefined):
            return value
        if type(digits) is not int or not 0 <= digits <= 4:
            raise ValueError(f"money: digits must be 0 to 4, got {digits!r}")
        number = _to_decimal(value, "money").quantize(self._quanta[digits], ROUND_HALF_UP)
        if self._fast_money and number >= 0:
            prefix, suffix = self._money_affixes
            return f"{prefix}{format(number, f',.{digits}f').translate(self._separators)}{suffix}"
        return self._babel_money(number, digits)

    def _babel_money(self, number: Decimal, digits: int) -> str:
        pattern = self._currency_patterns.get(digits)
        if pattern is None:
            pattern = copy.copy(self.locale.currency_formats["standard"])
            pattern.frac_prec = (digits, digits)
            self._currency_patterns[digits] = pattern
        return pattern.apply(number, self.locale, currency=self.currency, currency_digits=False)

    def _fast_path_agrees(self) -> bool:
        """The shortcut is used only if it prints exactly what babel prints for this locale."""
        samples = ("0", "0.5", "7", "999.995", "1234.5", "1234567.891", "100000")
        for digits in range(5):
            for sample in samples:
                number = Decimal(sample).quantize(self._quanta[digits], ROUND_HALF_UP)
                prefix, suffix = self._money_affixes
                fast = f"{prefix}{format(number, f',.{digits}f').translate(self._separators)}{suffix}"
                if fast != self._babel_money(number, digits):
                    return False
        decimal = self._decimal_pattern
        return all(
            format(n, ",").translate(self._separators) == decimal.apply(n, self.locale)
            for n in (0, 7, 1234, -1234, 1234567)
        )

    def number(self, value: Any) -> str | None:
        """A number as the locale writes it (`1 234,5`)."""
        if value is None or isinstance(value, Undefined):
            return value
        if type(value) is int:
            if -1000 < value < 1000:
                return str(value)
            if self._fast_money:
                return format(value, ",").translate(self._separators)
        return self._decimal_pattern.apply(_to_decimal(value, "number"), self.locale)

    def plural(
        self, value: Any, one: str, few: str, many: str, with_number: bool = True
    ) -> str | None:
        if value is None or isinstance(value, Undefined):
            return value
        category = self._plural_category(value)
        form = one if category == "one" else many if category == "many" else few
        if "{n}" in form:
            return form.replace("{n}", self.number(value) or "")
        if not with_number:
            return form
        return f"{self.number(value)} {form}"

    def _plural_category(self, value: Any) -> str:
        key = value if type(value) is int else None
        if key is not None:
            category = self._plural_cache.get(key)
            if category is not None:
                return category
        if key is not None:
            category = self.locale.plural_form(abs(key))
        else:
            # 2.0 and Decimal("1250.00") print as whole numbers, so they take the whole-number form.
            number = abs(_to_decimal(value, "plural"))
            if number == number.to_integral_value():
                number = number.to_integral_value()
            category = self.locale.plural_form(number)
        if key is not None and len(self._plural_cache) < 10_000:
            self._plural_cache[key] = category
        return category

    def date(self, context: Context, value: Any, format: str = "d MMMM y") -> str | None:
        if value is None or isinstance(value, Undefined):
            return value
        moment = self._as_date(value)
        if isinstance(moment, dt.datetime) and moment.tzinfo is not None:
            now = context.get("now")
            zone = now.tzinfo if isinstance(now, dt.datetime) else None
            if zone is not None:
                moment = moment.astimezone(zone)
        key = (moment, format, getattr(moment, "tzinfo", None))
        cached = self._dates.get(key)
        if cached is None:
            if len(self._dates) > 4096:
                self._dates.clear()
            cached = self._dates[key] = self._format_date(moment, format)
        return cached

    def _format_date(self, moment: dt.date, format: str) -> str:
        if format in ("short", "medium", "long", "full"):
            if isinstance(moment, dt.datetime):
                return format_datetime(moment, format, tzinfo=moment.tzinfo, locale=self.locale)
            return format_date(moment, format, locale=self.locale)
        pattern = self._date_patterns.get(format)
        if pattern is None:
            if len(self._date_patterns) > 256:
                self._date_patterns.clear()
            try:
                pattern = self._date_patterns[format] = parse_pattern(format)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"date: bad format {format!r}: {exc}") from None
        try:
            return pattern.apply(moment, self.locale)
        except AttributeError:
            raise ValueError(
                f"date: the format {format!r} shows a time of day but the value is a date"
            ) from None

    @staticmethod
    def _as_date(value: Any) -> dt.date:
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            text = value.strip()
            try:
                if len(text) == 10:
                    return dt.date.fromisoformat(text)
                return dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"date: {value!r} is not a date (use YYYY-MM-DD)") from None
        raise TypeError(f"date: expected a date, got {type(value).__name__}")


# ----------------------------------------------------------------------------------------------
# HTML → text


# HTML to text in a few regular-expression passes over the whole page: an HTMLParser subclass
# calls Python per token and costs more than rendering the email itself.  Breaks are marked with
# control characters (removed from the input first): BR a `<br>`, LINE a block's own line, PARA a
# paragraph (blank line).
BR, LINE, PARA = "\x00", "\x01", "\x02"
_NBSP, _NNBSP = "\x03", "\x04"  # no-break spaces survive `str.split()` as these
_HIDDEN = re.compile(
    r"<!--.*?-->|<(head|style|script|title|template|noscript)\b[^>]*>.*?</\1\s*>|<!\w[^>]*>|<\?[^>]*>",
    re.S | re.I,
)
_LINK = re.compile(r"<a\b([^>]*)>(.*?)</a\s*>", re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_IMG = re.compile(r"<img\b([^>]*)>", re.I)
# Plain replacements (no Python callback per tag), in this order.
_TAG_REPLACEMENTS = (
    (re.compile(r"<br\b[^>]*>", re.I), BR),
    (re.compile(r"</?(?:p|h[1-6]|table|ul|ol|blockquote|section|article|header|footer|hr)\b[^>]*>", re.I), PARA),
    (re.compile(r"<li\b[^>]*>", re.I), f"{LINE}- "),
    (re.compile(r"</?(?:div|tr|li|dt|dd)\b[^>]*>", re.I), LINE),
    (re.compile(r"</?t[dh]\b[^>]*>", re.I), " "),
)
_ATTR = re.compile(r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_BREAKS = re.compile(r"[\x01\x02](?: ?[\x01\x02])*")
_BLANK_LINES = re.compile(r"\n(?: *\n)+")
_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
                             "blockquote", "section", "article", "header", "footer", "hr"})
_LINE_TAGS = frozenset({"div", "tr", "li", "dt", "dd"})


def _attribute(attrs: str, wanted: str) -> str | None:
    for match in _ATTR.finditer(attrs):
        if match.group(1).lower() == wanted:
            value = next(group for group in match.groups()[1:] if group is not None)
            return html.unescape(value)
    return None


def _link(match: re.Match[str]) -> str:
    """`label (url)`; the label alone when it is the URL, the URL alone when there is no label."""
    label_html = match.group(2)
    href = _attribute(match.group(1), "href")
    if not href or href.startswith(("#", "javascript:")):
        return label_html
    target = href[len("mailto:"):] if href.startswith("mailto:") else href
    label = " ".join(html.unescape(_TAG.sub(" ", label_html)).split())
    if not label:
        return f"{label_html}{target}"
    if label in (target, href):
        return label_html
    return f"{label_html} ({target})"


def _img(match: re.Match[str]) -> str:
    alt = _attribute(match.group(1), "alt")
    return f" {alt} " if alt else ""


def _break(match: re.Match[str]) -> str:
    return "\n\n" if PARA in match.group(0) else "\n"


def html_to_text(markup: str) -> str:
    """The plain-text part of an email from its HTML."""
    text = markup
    for char in (BR, LINE, PARA, _NBSP, _NNBSP):
        if char in text:
            text = text.replace(char, "")
    text = _HIDDEN.sub("", text)
    text = _LINK.sub(_link, text)
    for pattern, replacement in _TAG_REPLACEMENTS:
        text = pattern.sub(replacement, text)
    if "<img" in text or "<IMG" in text:
        text = _IMG.sub(_img, text)
    text = _TAG.sub("", text)
    text = text.replace("\u00a0", _NBSP).replace("\u202f", _NNBSP)
    text = " ".join(text.split()).replace(_NBSP, "\u00a0").replace(_NNBSP, "\u202f")
    text = _BREAKS.sub(_break, text)
    text = html.unescape(text.replace(BR, "\n"))
    lines = [line.strip(" ") for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


_CONTROL = {code: " " for code in (*range(0, 32), *range(0x7F, 0xA0), 0x2028, 0x2029)}
_SPACES = re.compile(r" {2,}")


def clean_subject(text: str) -> str:
    """One line: no CR/LF or other control characters can reach a mail header.

    No-break spaces (babel's `1 234 ₽`) are kept, as in the body."""
    return _SPACES.sub(" ", text.translate(_CONTROL)).strip(" ")


# ----------------------------------------------------------------------------------------------
# Compiled templates and the renderer


def _fields_of(tree: nodes.Template, variable: str) -> set[str] | None:
    """Constant attribute names read from `variable`, or None if it is used any other way."""
    if any(True for _ in tree.find_all(_MAY_LOOP[3:])):
        return None
    fields: set[str] = set()
    accessed = 0
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name == variable:
            if isinstance(node, nodes.Getattr):
                fields.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                fields.add(node.arg.value)
            else:
                return None
            accessed += 1
    uses = sum(1 for name in tree.find_all(nodes.Name) if name.name == variable)
    return fields if uses == accessed else None


_MAY_LOOP = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)


@dataclass
class _Bundle:
    """The compiled templates of one (channel, name)."""

    kind: str  # "text" (sms, phone, webhook text) | "sms" | "email"
    main: Template
    text: Template | None = None


class Renderer:
    """Compiles each template once and renders it for one recipient at a time."""

    def __init__(
        self,
        templates_dir: Path,
        *,
        max_output_bytes: int = 256 * 1024,
        locale: str = "ru_RU",
        currency: str = "RUB",
    ) -> None:
        self.templates_dir = Path(templates_dir).resolve()
        self.root = self.templates_dir.parent
        self.max_output_bytes = max_output_bytes
        self._locale_filters = _LocaleFilters(locale, currency)
        self._html_env = self._environment(autoescape=True)
        self._text_env = self._environment(autoescape=False)
        self._html_globals = dict(self._html_env.globals)
        self._text_globals = dict(self._text_env.globals)
        self._bundles: dict[tuple[str, str], _Bundle] = {}
        self._subjects: dict[str, Template] = {}
        self._straight: dict[int, bool] = {}
        self._sources: dict[str, str] = {}
        self._trees: dict[str, nodes.Template | None] = {}

    def _environment(self, *, autoescape: bool) -> _Sandbox:
        env = _Sandbox(
            max_chars=self.max_output_bytes,
            loader=FileSystemLoader(str(self.templates_dir), encoding="utf-8"),
            undefined=StrictUndefined,
            autoescape=autoescape,
            finalize=_finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
            cache_size=-1,
        )
        env.filters.update(self._locale_filters.filters())
        return env

    # --- public API ---

    def render(
        self,
        channel: str,
        name: str,
        context: Mapping[str, Any],
        *,
        subject: str | None = None,
        sms_max_parts: int = 2,
    ) -> Rendered:
        bundle = self._bundles.get((channel, name)) or self._compile(channel, name)
        if bundle.kind == "email":
            return self._render_email(
                channel, bundle, context, subject, required_subject=channel == "email"
            )
        text = self._run(bundle.main, context).strip()
        if channel != "sms":
            return Rendered(channel, text)
        info = sms_info(text)
        if info.parts > sms_max_parts:
            raise TemplateError(
                f"the SMS is {info.parts} parts ({info.encoding}, {info.units} characters); "
                f"the campaign allows {sms_max_parts}",
                file=self._relative(bundle.main.filename),
            )
        return Rendered(channel, text, sms=info)

    def check(self, channel: str, name: str, *, subject: str | None = None) -> None:
        """Compile the templates (and the ones they include or extend) without rendering."""
        bundle = self._bundles.get((channel, name)) or self._compile(channel, name)
        for template in (bundle.main, bundle.text):
            if template is not None:
                self._check_references(template)
        if bundle.kind == "email":
            if subject is not None:
                self._subject_template(subject)
            elif "subject" not in bundle.main.blocks and channel == "email":
                raise self._no_subject(bundle)

    # --- compiling ---

    def customer_fields(self, channel: str, name: str, *, subject: str | None = None) -> frozenset[str] | None:
        """The `customer.X` fields a template reads, so that the planner fetches only those;
        None when it uses `customer` as a whole (passes it on, loops over it) or other templates."""
        bundle = self._bundles.get((channel, name)) or self._compile(channel, name)
        sources = [self._source(t.filename) for t in (bundle.main, bundle.text) if t is not None]
        if subject:
            sources.append(subject)
        fields: set[str] = set()
        for source in sources:
            if source is None:
                return None
            found = _fields_of(self._text_env.parse(source), "customer")
            if found is None:
                return None
            fields |= found
        return frozenset(fields)

    def _compile(self, channel: str, name: str) -> _Bundle:
        if channel not in CHANNELS:
            raise TemplateError(
                f"unknown channel {channel!r} (expected one of: {', '.join(CHANNELS)})"
            )
        if not _NAME.fullmatch(name) or ".." in name:
            raise TemplateError(
                f"template name {name!r} is not valid: use letters, digits, '_', '-' and '.'"
            )
        if channel == "sms":
            bundle = _Bundle("sms", self._load(self._text_env, f"sms/{name}.txt.j2"))
        elif channel == "phone":
            bundle = _Bundle("text", self._load(self._text_env, f"phone/{name}.txt.j2"))
        elif channel == "email":
            bundle = self._compile_email(name)
        else:
            bundle = self._compile_webhook(name)
        self._bundles[(channel, name)] = bundle
        return bundle

    def _compile_email(self, name: str) -> _Bundle:
        html_template = self._load(self._html_env, f"email/{name}.html.j2")
        text_template = None
        if self._exists(f"email/{name}.txt.j2"):
            text_template = self._load(self._text_env, f"email/{name}.txt.j2")
        return _Bundle("email", html_template, text_template)

    def _compile_webhook(self, name: str) -> _Bundle:
        if self._exists(f"webhook/{name}.txt.j2"):
            return _Bundle("text", self._load(self._text_env, f"webhook/{name}.txt.j2"))
        if self._exists(f"sms/{name}.txt.j2"):
            return _Bundle("sms", self._load(self._text_env, f"sms/{name}.txt.j2"))
        if self._exists(f"email/{name}.html.j2"):
            return self._compile_email(name)
        raise TemplateError(
            f"template not found: expected {self._display(f'webhook/{name}.txt.j2')} "
            f"(or an SMS or email template of the same name)"
        )

    def _exists(self, relative: str) -> bool:
        return (self.templates_dir / relative).is_file()

    def _load(self, env: _Sandbox, relative: str) -> Template:
        if not self._exists(relative):
            raise TemplateError(f"template not found: expected {self._display(relative)}")
        try:
            return env.get_template(relative)
        except TemplateSyntaxError as exc:
            raise self._syntax_error(exc, relative) from None
        except UnicodeDecodeError:
            raise TemplateError(
                "the template is not UTF-8 text", file=self._display(relative)
            ) from None
        except TemplateNotFound as exc:
            raise TemplateError(f"template not found: {exc.name}") from None
        except OSError as exc:
            raise TemplateError(
                f"the template cannot be read: {exc.strerror}", file=self._display(relative)
            ) from None

    def _check_references(self, template: Template) -> None:
        env = template.environment
        name = template.name or ""
        source = self._source(template.filename)
        if source is None:
            return
        try:
            referenced = list(find_referenced_templates(env.parse(source, name, template.filename)))
        except TemplateSyntaxError as exc:
            raise self._syntax_error(exc, name) from None
        for other in referenced:
            if other is None:
                continue
            try:
                env.get_template(other)
            except TemplateSyntaxError as exc:
                raise self._syntax_error(exc, other) from None
            except TemplateNotFound:
                raise TemplateError(
                    f"included template not found: expected {self._display(other)}",
                    file=self._relative(template.filename),
                ) from None

    def _subject_template(self, source: str) -> Template:
        template = self._subjects.get(source)
        if template is None:
            try:
                template = self._text_env.from_string(source)
            except TemplateSyntaxError as exc:
                raise TemplateError(
                    f"the subject does not compile: {exc.message}", line=exc.lineno, field="subject"
                ) from None
            if len(self._subjects) > 1000:
                self._subjects.clear()
            self._subjects[source] = template
        return template

    # --- rendering ---

    def _run(self, template: Template, context: Mapping[str, Any]) -> str:
        return self._stream(template, template.root_render_func, self._context(template, context))

    def _context(self, template: Template, context: Mapping[str, Any]) -> Context:
        """`template.new_context` without copying the ChainMap of globals item by item."""
        env = template.environment
        flat = self._html_globals if env is self._html_env else self._text_globals
        return new_context(env, template.name, template.blocks, context, False, flat)

    def _stream(
        self, template: Template, render_func: Callable[[Context], Iterator[str]], ctx: Context
    ) -> str:
        _RANGE_LEFT.set([RANGE_BUDGET])
        limit = self.max_output_bytes
        try:
            try:
                if self._is_straight(template):
                    text = "".join(render_func(ctx))
                    size = len(text)
                else:
                    chunks = []
                    size = 0
                    generator = render_func(ctx)
                    for chunk in generator:
                        size += len(chunk)
                        if size > limit:
                            raise self._too_large(template, generator)
                        chunks.append(chunk)
                    text = "".join(chunks)
                if size > limit:
                    raise _TooLarge(self._too_large_message())
                if size * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit:
                    raise _TooLarge(self._too_large_message())
                return text
            except TemplateError:
                raise
            except Exception:
                template.environment.handle_exception()
        except TemplateError:
            raise
        except Exception as exc:
            raise self._render_error(exc, template) from None

    def _is_straight(self, template: Template) -> bool:
        """A template without loops, macros or other templates emits a bounded number of chunks,
        each bounded by the sandbox, so it can be joined at once and measured afterwards; any
        other template is measured while it streams."""
        key = id(template)
        straight = self._straight.get(key)
        if straight is None:
            source = self._source(template.filename) if template.filename else None
            straight = False
            if source is not None:
                try:
                    tree = template.environment.parse(source)
                except TemplateSyntaxError:
                    tree = None
                straight = tree is not None and not any(True for _ in tree.find_all(_MAY_LOOP))
            self._straight[key] = straight
        return straight

    def _render_email(
        self,
        channel: str,
        bundle: _Bundle,
        context: Mapping[str, Any],
        subject: str | None,
        *,
        required_subject: bool,
    ) -> Rendered:
        page = self._run(bundle.main, context).strip()
        if bundle.text is not None:
            text = self._run(bundle.text, context).strip()
        else:
            text = html_to_text(page)
        if subject is not None:
            title = self._run(self._subject_template(subject), context)
        elif "subject" in bundle.main.blocks:
            template = bundle.main
            title = html.unescape(
                self._stream(template, template.blocks["subject"], self._context(template, context))
            )
        elif required_subject:
            raise self._no_subject(bundle)
        else:
            return Rendered(channel, text, html=page)
        return Rendered(channel, text, subject=clean_subject(title), html=page)

    def _no_subject(self, bundle: _Bundle) -> TemplateError:
        return TemplateError(
            "the email has no subject: set `subject` in the campaign "
            "or add {% block subject %}...{% endblock %} to the template",
            file=self._relative(bundle.main.filename),
        )

    # --- errors ---

    def _too_large_message(self) -> str:
        return f"the message is larger than {self.max_output_bytes // 1024} KB"

    def _too_large(self, template: Template, generator: Iterator[str]) -> TemplateError:
        """The error, at the template line the output was at when it crossed the limit."""
        frame = getattr(generator, "gi_frame", None)
        line = template.get_corresponding_lineno(frame.f_lineno) if frame is not None else None
        return TemplateError(
            self._too_large_message(), file=self._relative(template.filename), line=line
        )

    def _syntax_error(self, exc: TemplateSyntaxError, relative: str | None = None) -> TemplateError:
        # Some lexer errors (an unclosed {# or {% raw %}) come without a file name: use the one loaded.
        file = self._relative(exc.filename) or (self._display(relative) if relative else None)
        return TemplateError(f"syntax error: {exc.message}", file=file, line=exc.lineno)

    def _render_error(self, exc: BaseException, template: Template) -> TemplateError:
        if isinstance(exc, TemplateSyntaxError):
            return self._syntax_error(exc)
        filename, line = _locate(exc.__traceback__, self._is_template_file)
        if filename is None:
            filename = template.filename
        if filename in (None, "<template>"):
            source = next((text for text, compiled in self._subjects.items() if compiled is template), None)
            message = self._explain(exc, source, line)
            return TemplateError(message, line=line, field="subject")
        message = self._explain(exc, self._source(filename), line)
        return TemplateError(message, file=self._relative(filename), line=line)

    def _is_template_file(self, filename: str) -> bool:
        return filename == "<template>" or filename.startswith(str(self.templates_dir))

    def _explain(self, exc: BaseException, source: str | None, line: int | None) -> str:
        if isinstance(exc, _MissingValue):
            return self._missing_message(source, line, None)
        if isinstance(exc, UndefinedError):
            return self._missing_message(source, line, _undefined_name(str(exc)))
        if isinstance(exc, _TooLarge):
            return str(exc)
        if isinstance(exc, SecurityError):
            return f"not allowed in a template: {exc}"
        if isinstance(exc, TemplateNotFound):
            return f"included template not found: {exc.name}"
        if isinstance(exc, RecursionError):
            return "the template calls itself without end"
        return f"the template fails for this customer: {exc} ({type(exc).__name__})"

    def _missing_message(self, source: str | None, line: int | None, name: str | None) -> str:
        candidates = self._expressions_at(source, line, name)
        if len(candidates) == 1:
            what = f"{candidates[0]} is"
        elif candidates:
            what = "one of " + ", ".join(candidates) + " is"
        elif name:
            what = f"{name} is"
        else:
            what = "a value printed here is"
        return f"{what} missing for this customer; use |default(...)"

    def _expressions_at(self, source: str | None, line: int | None, name: str | None) -> list[str]:
        """Dotted expressions on the failing line that could be the missing value (error path only)."""
        if line is None or source is None:
            return []
        if source not in self._trees:
            try:
                self._trees[source] = self._text_env.parse(source)
            except TemplateSyntaxError:
                self._trees[source] = None
        tree = self._trees[source]
        if tree is None:
            return []
        found: list[str] = []
        for chain in _chains(tree, defaulted=False, printed=name is not None):
            if chain.lineno != line:
                continue
            for text in _chain_prefixes(chain, name):
                if text not in found:
                    found.append(text)
        return found

    def _source(self, filename: str | None) -> str | None:
        if filename is None:
            return None
        source = self._sources.get(filename)
        if source is None:
            try:
                source = Path(filename).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
            self._sources[filename] = source
        return source

    def _relative(self, filename: str | None) -> str | None:
        if filename is None:
            return None
        try:
            return Path(filename).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return filename

    def _display(self, relative: str) -> str:
        return f"{self.templates_dir.name}/{relative}"


def _locate(
    tb: TracebackType | None, is_template: Callable[[str], bool]
) -> tuple[str | None, int | None]:
    """The innermost template frame of a traceback rewritten by Jinja."""
    filename = line = None
    while tb is not None:
        code_file = tb.tb_frame.f_code.co_filename
        if is_template(code_file):
            filename, line = code_file, tb.tb_lineno
        tb = tb.tb_next
    return filename, line


_UNDEFINED_PATTERNS = (
    re.compile(r"has no attribute '([^']+)'"),
    re.compile(r"^'([^']+)' is undefined"),
    re.compile(r"has no element '?([^']+)'?"),
)


def _undefined_name(message: str) -> str | None:
    for pattern in _UNDEFINED_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


_CHAIN_NODES = (nodes.Name, nodes.Getattr, nodes.Getitem)


def _chains(node: nodes.Node, *, defaulted: bool, printed: bool) -> Iterator[nodes.Node]:
    """Outermost name/attribute/item chains, skipping those under `default`.

    `printed`: only chains inside `{{ ... }}` output count (a None is an error only when printed).
    """
    if isinstance(node, _CHAIN_NODES):
        if printed and not defaulted:
            yield node
        return
    printed = printed or isinstance(node, nodes.Output)
    if isinstance(node, nodes.Filter) and node.name in ("default", "d"):
        if node.node is not None:
            yield from _chains(node.node, defaulted=True, printed=printed)
        for child in (*node.args, *(pair.value for pair in node.kwargs)):
            yield from _chains(child, defaulted=defaulted, printed=printed)
        return
    for child in node.iter_child_nodes():
        yield from _chains(child, defaulted=defaulted, printed=printed)


def _chain_prefixes(chain: nodes.Node, name: str | None) -> list[str]:
    parts: list[str] = []
    node = chain
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const):
            parts.append(str(node.arg.value))
        else:
            return []
        node = node.node
    if not isinstance(node, nodes.Name):
        return []
    if node.name in ("loop", "range", "namespace", "cycler", "joiner"):
        return []
    parts.append(node.name)
    parts.reverse()
    if name is None:
        return [".".join(parts)]
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == name:
            return [".".join(parts[: index + 1])]
    return []
