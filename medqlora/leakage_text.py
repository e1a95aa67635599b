"""Text as the leakage guard compares it: the same normalisation on both sides (``normalize``): markup undone
(HTML entities and percent-encoding decoded, HTML tags and comments removed, LaTeX's text markup and Markdown's link
addresses removed, words
hyphenated across a line break joined), Unicode NFKC, format (Cf) and zero-width characters and combining marks removed, look-alike letters made
Latin, case folded, runs of punctuation and whitespace made one space, numbers written as words made digits; and
the question hashes runs record."""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Container
from typing import Any

from .confusable_letters import LOOK_ALIKES

# zero-width and invisible characters outside the Cf category (Hangul fillers, Khmer vowels, CGJ, ...)
_INVISIBLE = set("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0")


class _Table(dict):
    """str.translate table, filled as characters are met: word characters stay, format (Cf) and
    zero-width characters and combining marks (Mn, Me) go, anything else becomes a space."""

    def __missing__(self, code: int) -> str | None:
        char = chr(code)
        category = unicodedata.category(char)
        if category in ("Cf", "Mn", "Me") or char in _INVISIBLE:
            value = None
        elif char.isalnum() or category == "Mc":
            value = char
        else:
            value = " "
        self[code] = value
        return value


_TABLE = _Table()


# Cyrillic, Greek and other letters that look like Latin ones (Unicode's confusables, the common part),
# both cases: a question typed with Cyrillic а е о і с р is the same question.
_CONFUSABLE = str.maketrans({
    # Cyrillic
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "Х": "X", "У": "Y", "І": "I", "Ј": "J", "Ѕ": "S", "Ӏ": "I", "Ү": "Y", "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W", "Ь": "b",
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "х": "x", "у": "y", "і": "i", "ј": "j", "ѕ": "s", "ӏ": "l", "ү": "y", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h",
    "ь": "b", "п": "n", "г": "r", "ѵ": "v", "ɡ": "g", "ɑ": "a", "ı": "i", "ȷ": "j",
    # Greek
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J",
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j", "ς": "c",
    # Armenian
    "օ": "o", "ս": "u", "ո": "n", "հ": "h", "ց": "g", "զ": "q",
})




# Latin letters drawn otherwise that NFKC leaves as they are ("fancy text" generators): small capitals (ᴀ ʙ ᴄ ꜰ ɪ),
# regional indicators (🇦), negative squared and circled letters (🅰 🅐): each made its letter.
_DRAWN_OTHERWISE = re.compile(r"(?:LATIN LETTER SMALL CAPITAL|REGIONAL INDICATOR SYMBOL LETTER|"
                              r"NEGATIVE (?:SQUARED|CIRCLED) LATIN CAPITAL LETTER) ([A-Z])")
# the rest of Unicode's confusables of Latin letters (Cherokee, Lisu, Coptic...): under the table above
_CONFUSABLE = {**{ord(char): letter for letter, chars in LOOK_ALIKES.items() for char in chars}, **_CONFUSABLE}
_CONFUSABLE.update({code: match[1].lower() for start, end in ((0x0250, 0x02B0), (0x1D00, 0x1D80), (0xA720, 0xA800),
                                                                  (0x1F100, 0x1F200))
                    for code in range(start, end)
                    if (match := _DRAWN_OTHERWISE.fullmatch(unicodedata.name(chr(code), "")))})


_ASCII = bytes(c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122) else 32 for c in range(256))


# An HTML tag (<p>, </b>, <br/>, <a href="...">: an element of HTML, its attributes well formed) or comment; the
# inline ones (formatting inside a sentence, even inside a word: H<sub>2</sub>O) are removed, the others (paragraphs,
# line breaks, cells) separate words. Prose such as "with<or =5 lesions" or "p<0.05" is no tag.
_INLINE_TAGS = frozenset({"a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "del", "dfn", "em", "font", "i", "ins",
                          "kbd", "mark", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "tt", "u",
                          "var", "wbr"})
_BLOCK_TAGS = frozenset({"address", "article", "aside", "blockquote", "body", "br", "caption", "center", "col",
                         "colgroup", "dd", "details", "div", "dl", "dt", "figcaption", "figure", "footer", "h1", "h2",
                         "h3", "h4", "h5", "h6", "head", "header", "hr", "html", "img", "li", "main", "nav", "ol", "p",
                         "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "title", "tr",
                         "ul"})
_TAG_NAMES = "|".join(sorted(_INLINE_TAGS | _BLOCK_TAGS, key=len, reverse=True))  # the longest first: <pre> over <p>
_TAG = re.compile(r"<!--.*?-->|<(/?)(" + _TAG_NAMES + r")"
                  r"(?:\s+[A-Za-z_:][-\w:.]*(?:\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'|[^\s\"'=<>`]+))?)*\s*/?>",
                  re.DOTALL | re.IGNORECASE)
_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2})+")  # URL-encoding: %20 for a blank, %C3%A9 for é


# A word hyphenated across a line break (text pasted from a PDF: "aroma-\ntase"), the hyphen ASCII, Unicode's or a
# soft one, blanks around the break: the word is joined ("aromatase").
_BROKEN_WORD = re.compile(r"(?<=[^\W\d_])[-\u2010\u00ad][ \t]*\r?\n[ \t]*(?=[^\W\d_])")
# LaTeX's markup of text (\textbf{aromatase}, \emph{breast cancer}, \textit[..]{..}, {\bf x}, \mathrm{x}): the
# command goes, its argument stays; innermost first, so nested markup is undone by repeating.
_TEX_COMMANDS = ("textbf|textit|textsl|textsc|texttt|textrm|textsf|textup|textmd|textnormal|emph|underline|uline|"
                 "mathrm|mathbf|mathit|mathsf|mathtt|mathcal|mathnormal|text|mbox|hbox|fbox|textsuperscript|"
                 "textsubscript|section|subsection|subsubsection|paragraph|footnote|caption|title|href|url")
_TEX_MARKUP = re.compile(r"\\(?:" + _TEX_COMMANDS + r")\*?\s*(?:\[[^\]{}]*\]\s*)?\{([^{}]*)\}")
_TEX_SWITCH = re.compile(r"\{\\(?:bf|it|em|sl|sc|tt|rm|sf|bfseries|itshape|ttfamily|scshape|small|large|Large|"
                         r"footnotesize|normalsize)\s+([^{}]*)\}")


# Markdown's links: [text](url "title"), ![alt](url), [text][ref] and [text][] (the text stays, the address goes: its
# words are not the sentence's), and the definitions of references ([ref]: url "title", a line of its own).
_MD_INLINE_LINK = re.compile(r"!?\[([^\[\]]*)\]\((?:[^()\s]|\([^()\s]*\))*(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_MD_REFERENCE_LINK = re.compile(r"!?\[([^\[\]]+)\]\[[^\[\]]*\]")
_MD_DEFINITION = re.compile(r"^[ \t]{0,3}\[[^\[\]]+\]:[ \t]*\S+.*$", re.MULTILINE)


# Reference markers of papers: [3], [1,2], [4-6], [7–9] in brackets, and <sup>3</sup> (their number is no word of
# the sentence; a superscript after a unit, kg/m<sup>2</sup>, stays); a number glued to a word as a footnote (women1, PDF text) is counted as a misspelling by the alignment.
_CITATION = re.compile(r"\[\s*\d{1,3}(?:\s*[,;\u2013\u2014-]\s*\d{1,3})*\s*\]")
_SUP_CITATION = re.compile(r"(?:(?<=[^\W\d_]{3})|(?<=[.,;:)\]]))<sup>\s*\[?\s*\d{1,3}(?:\s*[,;\u2013\u2014-]\s*\d{1,3})*\s*\]?\s*</sup>", re.IGNORECASE)
# Escapes written out as text (a JSON export escaped twice: "Do\\nadjuvant"): a blank.
_LITERAL_ESCAPE = re.compile(r"\\[nrt]")


def _unlinked(text: str) -> str:
    """``text`` with Markdown's links replaced by their text, and reference definitions removed."""
    text = _MD_INLINE_LINK.sub(r"\1", text) if "](" in text else text
    text = _MD_REFERENCE_LINK.sub(r"\1", text) if "][" in text else text
    return _MD_DEFINITION.sub("", text) if "]:" in text else text


def _unlatexed(text: str) -> str:
    """``text`` with LaTeX's text markup removed, the words it marks kept."""
    for _ in range(4):
        undone = _TEX_SWITCH.sub(r"\1", _TEX_MARKUP.sub(r"\1", text))
        if undone == text:
            break
        text = undone
    return text


def _tag(match: re.Match) -> str:
    return "" if (match.group(2) or "").lower() in _INLINE_TAGS else " "


def _percent(match: re.Match) -> str:
    """A run of %XX decoded, when it is UTF-8 text an encoder would have escaped (not a letter or digit of ASCII:
    ``50%41`` is not an encoded 'A')."""
    try:
        decoded = bytes.fromhex(match.group(0).replace("%", "")).decode("utf-8")
    except UnicodeDecodeError:
        return match.group(0)
    return match.group(0) if any(c.isascii() and c.isalnum() for c in decoded) else decoded


# ECMA-48 escape sequences: CSI (ESC [ or its one-byte form, parameters, a final letter: colours, cursor moves),
# OSC (ESC ], up to BEL or ESC \: a window title, a link) and the two-character ones
_TERMINAL_ESCAPE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")


def unmarked(text: str) -> str:
    """``text`` with its markup undone: HTML entities (&nbsp; &amp; &#39;, escaped twice at most: &amp;nbsp;) and
    percent-encoding (%20) decoded, HTML tags and comments removed (text scraped from web pages), LaTeX's text markup
    removed, Markdown's links replaced by their text, a terminal's escape sequences (colours) removed, words
    hyphenated across a line break joined (text pasted from a PDF), reference markers ([3], <sup>1,2</sup>) removed and escapes written out as text (``\\n``) made blanks."""
    if "\x1b" in text or "\x9b" in text:  # a terminal's colours and cursor moves (text copied from a log)
        text = _TERMINAL_ESCAPE.sub("", text)
    if "]" in text:
        text = _unlinked(text)
    if "\n" in text:
        text = _BROKEN_WORD.sub("", text)
    if "\\" in text:
        text = _LITERAL_ESCAPE.sub(" ", _unlatexed(text))
    if "]" in text:
        text = _CITATION.sub(" ", text)
    for _ in range(3):
        if "&" not in text and "%" not in text:
            break
        text = _PERCENT.sub(_percent, html.unescape(text)) if "%" in text else html.unescape(text)
    if "<" not in text:
        return text
    return _TAG.sub(_tag, _SUP_CITATION.sub(" ", text) if "<sup" in text.lower() else text)


_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_SMALL = {**{word: n for n, word in enumerate(_UNITS)},
          **{word: 10 * n for n, word in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
             if word != "_"}}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6}
_NUMBER_WORDS = set(_SMALL) | set(_SCALES)
_THOUSANDS = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")  # 1,000 and 12,500: one number, as 'one thousand' is


def _numbers_as_digits(split: list[str]) -> list[str]:
    """Numbers written as words made digits ('eleven' 11, 'twenty-one' 21, 'five hundred' 500, 'one hundred and
    twenty' 120), and a range written 'X to Y' made 'X Y' as 'X-Y' is: a question with its numbers spelt out is the
    same question."""
    if not _NUMBER_WORDS.isdisjoint(split):
        split = _spelt_numbers(split)
    return _ranges(split) if "to" in split else split


def _spelt_numbers(split: list[str]) -> list[str]:
    out: list[str] = []
    at = 0
    while at < len(split):
        if split[at] not in _NUMBER_WORDS:
            out.append(split[at])
            at += 1
            continue
        total = current = 0
        last = ""  # what the number's previous word was: "" (none), "tens", "unit", "scale" or "and"
        while at < len(split):
            word = split[at]
            value = _SMALL.get(word)
            if value is not None and (last in ("", "scale", "and") or (last == "tens" and 0 < value < 10)):
                current += value
                last = "tens" if value >= 20 else "unit"
            elif word == "hundred" and last != "scale":
                current, last = max(current, 1) * 100, "scale"
            elif word in ("thousand", "million") and (last != "scale" or current % 1000 != 0):
                total, current, last = total + max(current, 1) * _SCALES[word], 0, "scale"
            elif word == "and" and last == "scale" and at + 1 < len(split) and split[at + 1] in _SMALL:
                last = "and"
            else:
                break  # the next word starts another number, or is no number
            at += 1
        out.append(str(total + current))
    return out


def _ranges(split: list[str]) -> list[str]:
    """'X to Y' (both numbers) made 'X Y'."""
    dropped, start = [], 0
    while True:
        try:
            at = split.index("to", start)
        except ValueError:
            break
        if 0 < at < len(split) - 1 and split[at - 1].isdigit() and split[at + 1].isdigit():
            dropped.append(at)
        start = at + 1
    if not dropped:
        return split
    gone = set(dropped)
    return [word for position, word in enumerate(split) if position not in gone]




def words(text: Any) -> list[str]:
    """The words of ``text`` as the guard compares them (see ``normalize``), numbers written as words made digits."""
    text = str(text)
    if "," in text:
        text = _THOUSANDS.sub(lambda number: number.group(0).replace(",", ""), text)
    return _numbers_as_digits(_plain_words(text))


def _plain_words(text: Any) -> list[str]:
    text = unmarked(str(text))
    if text.isascii():  # the common case, and the same result as the full path below
        return text.encode("ascii").translate(_ASCII).decode("ascii").split()
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text)).translate(_CONFUSABLE).casefold()
    text = unicodedata.normalize("NFKC", text.translate(_TABLE)).casefold()
    return text.translate(_CONFUSABLE).split()


# The forms the guard compares (``compared``): words whose change leaves the question the same one. The "s" of a
# possessive (split off at its apostrophe) is dropped; articles made one, forms of be, do and have made one (kept as
# words: a question's length sets how many changes it may have, overlap_near.py); plurals made singular; a digit
# standing for a look-alike letter inside a word ("hyp0tension", "d1abetes") made that letter.
_DROPPED = frozenset({"s"})
ARTICLE = "the"  # the form every article takes (overlap_near: one added or left out is no change)
_AUXILIARY = {"a": ARTICLE, "an": ARTICLE, "does": "do", "did": "do", "done": "do", "is": "be", "are": "be", "was": "be", "were": "be", "am": "be",
              "been": "be", "being": "be", "has": "have", "had": "have", "having": "have"}
_IRREGULAR = {"women": "woman", "men": "man", "children": "child", "teeth": "tooth", "feet": "foot", "mice": "mouse",
              "people": "person", "lice": "louse", "geese": "goose", "oxen": "ox"}
_INNER_DIGIT = re.compile(r"(?<=[^\W\d_])[013457]+(?=[^\W\d_])")  # between letters: hyp0tension
_LEADING_DIGIT = re.compile(r"^[013457]+(?=[^\W\d_])")  # before letters: 5tatin
# after letters: th3, i5; only in a short word or one with digits for letters inside (str0k3): "condition5" and
# "grade3" are labels, not "conditions" and "gradee"
_TRAILING_DIGIT = re.compile(r"(?<=[^\W\d_])[013457]+$")
SHORT_WORD = 3
_LOOKALIKE = str.maketrans("013457", "oieast")
_LOOKALIKE_DIGITS = frozenset("013457")
_FOOTNOTED = re.compile(r"([^\W\d_]+)(\d{1,3})")  # a word and a footnote number glued to it (overlap_near.footnote)
_FORMS_KEPT = 1 << 20  # words whose form is remembered (the vocabulary of a large data set)


def _singular(word: str) -> str:
    """A plural made singular, roughly but the same way on both sides ("studies" "study", "lesions" "lesion",
    "classes" "class"); "virus", "analysis", "less" and short words are kept."""
    if len(word) < 4 or word[-1] != "s" or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zes")):
        return word[:-2]
    return word[:-1]


def _digits_as_letters(word: str) -> str:
    """``word`` with the digits that stand for look-alike letters made those letters (0 o, 1 i, 3 e, 4 a, 5 s, 7 t)."""
    def letters(digits: re.Match) -> str:
        return digits.group(0).translate(_LOOKALIKE)

    inner = _INNER_DIGIT.sub(letters, word)
    mapped = _LEADING_DIGIT.sub(letters, inner)
    if inner != word or sum(char.isalpha() for char in word) <= SHORT_WORD:
        mapped = _TRAILING_DIGIT.sub(letters, mapped)
    return mapped


class _Forms(dict):
    """word -> the form the guard compares ("" for a dropped word), filled as words are met."""

    def __missing__(self, word: str) -> str:
        if len(self) >= _FORMS_KEPT:
            self.clear()
        form = _form(word)
        self[word] = form
        return form


def _form(word: str) -> str:
    """The compared form of one word; l and i are one letter in it (1 stands for either in digits for letters)."""
    return _inflection(word).replace("l", "i")


def _inflection(word: str) -> str:
    mapped = word if word.isalpha() or word.isdigit() else _digits_as_letters(word)
    if mapped in _DROPPED:
        return ""
    if mapped in _AUXILIARY:
        return _AUXILIARY[mapped]
    if mapped in _IRREGULAR:
        return _IRREGULAR[mapped]
    if mapped.isalpha():  # a plural's s written as a digit is no plural: "grade5" is not "grade"
        return _singular(mapped) if word[-1].isalpha() else mapped
    footnoted = _FOOTNOTED.fullmatch(word)
    return (_inflection(footnoted[1]) or footnoted[1]) + footnoted[2] if footnoted else mapped


_FORMS = _Forms()


def compared_forms(split: list[str]) -> list[str]:
    """The forms of ``words`` the leakage guard compares: a question asked with "Do ... patients" for "Does ... a
    patient's" or "hyp0tension" for "hypotension" is the same question. Only the guard's comparison uses them (the
    letters of ``words`` stay what the text says: glued questions, hashes and answers use those)."""
    return [form for form in map(_FORMS.__getitem__, split) if form]


def form(word: str) -> str:
    """The form of one of ``words`` that the guard compares ("" for a dropped word)."""
    return _FORMS[word]


def compared(text: Any) -> list[str]:
    """``compared_forms`` of the words of ``text``."""
    return compared_forms(words(text))


def compared_as_known(split: list[str], known: Container[str]) -> list[str]:
    """``compared_forms`` of the words of a training text, where a word that is no word of the evaluation questions
    (``known``: their forms) but is one with the digits at its end read as letters is read so: "strok3" for
    "stroke", "adult5" for "adults". Only then: a label's number ("condition5", "grade3") that the questions share
    stays the number it is."""
    forms = []
    for word in split:
        if not (found := _FORMS[word]):
            continue
        if found not in known and word[-1] in _LOOKALIKE_DIGITS and not word.isdigit():
            letters = _TRAILING_DIGIT.sub(lambda digits: digits.group(0).translate(_LOOKALIKE), word)
            found = read if (read := _FORMS[letters]) in known else found
        forms.append(found)
    return forms


def normalize(text: Any) -> str:
    """``text`` as the guard compares it: markup undone (``unmarked``), NFKC, no format/zero-width characters or
    accents, Cyrillic and Greek look-alikes of Latin letters made Latin, case folded, punctuation and
    whitespace collapsed to single spaces."""
    return " ".join(words(text))


def question_hash(text: str) -> str:
    """The hash of a question that runs record (numbers as written: the records of earlier versions stay valid)."""
    return hashlib.sha1(" ".join(_plain_words(text)).encode()).hexdigest()[:16]


def legacy_question_hash(text: str) -> str:
    """The hash that runs of earlier versions recorded (ASCII letters and digits only)."""
    return hashlib.sha1(re.sub(r"[^0-9a-z]+", " ", str(text).lower()).strip().encode()).hexdigest()[:16]
