"""VQA answer normalisation exactly as the original preprocessing does it (VQA-eval ``normalize_word``).

Reproduced behaviour, quirks included (spec §5.3, §9.9):
- the answer is ``str(answer).lower()`` first;
- each punctuation mark is deleted when it touches a space or when the text contains a
  digit-comma-digit group, otherwise replaced by a space;
- periods not followed by a digit are removed, but the original passes ``re.UNICODE`` (= 32) as
  the *count* argument of ``re.sub``, so at most 32 periods go; we keep that cap;
- number words zero..ten (and "none") become digits, articles a/an/the are dropped, a fixed
  table restores apostrophes in contractions, and commas are removed.
"""

from __future__ import annotations

import re

PERIOD_SUB_COUNT = int(re.UNICODE)  # == 32: the upstream count quirk, kept for parity
# "(?!<=\d)" is a negative *lookahead* for the text "<=" followed by a digit (a typo for a
# lookbehind in the VQA-eval code); we keep the pattern as it behaves.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# The VQA-eval contraction table, written as "typed form => corrected form" pairs. Keys with
# capitals can never match (answers are lower-cased first) but are kept for completeness.
_CONTRACTION_TABLE = """
aint=>ain't arent=>aren't cant=>can't couldve=>could've couldnt=>couldn't couldn'tve=>couldn't've
couldnt've=>couldn't've didnt=>didn't doesnt=>doesn't dont=>don't hadnt=>hadn't hadnt've=>hadn't've
hadn'tve=>hadn't've hasnt=>hasn't havent=>haven't hed=>he'd hed've=>he'd've he'dve=>he'd've hes=>he's
howd=>how'd howll=>how'll hows=>how's Id've=>I'd've I'dve=>I'd've Im=>I'm Ive=>I've isnt=>isn't itd=>it'd
itd've=>it'd've it'dve=>it'd've itll=>it'll let's=>let's maam=>ma'am mightnt=>mightn't
mightnt've=>mightn't've mightn'tve=>mightn't've mightve=>might've mustnt=>mustn't mustve=>must've
neednt=>needn't notve=>not've oclock=>o'clock oughtnt=>oughtn't ow's'at=>'ow's'at 'ows'at=>'ow's'at
'ow'sat=>'ow's'at shant=>shan't shed've=>she'd've she'dve=>she'd've she's=>she's shouldve=>should've
shouldnt=>shouldn't shouldnt've=>shouldn't've shouldn'tve=>shouldn't've somebody'd=>somebodyd
somebodyd've=>somebody'd've somebody'dve=>somebody'd've somebodyll=>somebody'll somebodys=>somebody's
someoned=>someone'd someoned've=>someone'd've someone'dve=>someone'd've someonell=>someone'll
someones=>someone's somethingd=>something'd somethingd've=>something'd've something'dve=>something'd've
somethingll=>something'll thats=>that's thered=>there'd thered've=>there'd've there'dve=>there'd've
therere=>there're theres=>there's theyd=>they'd theyd've=>they'd've they'dve=>they'd've theyll=>they'll
theyre=>they're theyve=>they've twas=>'twas wasnt=>wasn't wed've=>we'd've we'dve=>we'd've weve=>we've
werent=>weren't whatll=>what'll whatre=>what're whats=>what's whatve=>what've whens=>when's whered=>where'd
wheres=>where's whereve=>where've whod=>who'd whod've=>who'd've who'dve=>who'd've wholl=>who'll whos=>who's
whove=>who've whyll=>why'll whyre=>why're whys=>why's wont=>won't wouldve=>would've wouldnt=>wouldn't
wouldnt've=>wouldn't've wouldn'tve=>wouldn't've yall=>y'all yall'll=>y'all'll y'allll=>y'all'll
yall'd've=>y'all'd've y'alld've=>y'all'd've y'all'dve=>y'all'd've youd=>you'd youd've=>you'd've
you'dve=>you'd've youll=>you'll youre=>you're youve=>you've
"""
CONTRACTIONS = dict(pair.split("=>") for pair in _CONTRACTION_TABLE.split())


def normalize_answer(answer: object) -> str:
    """Normalise a VQA answer the way the original answer vocabulary was built.

    Args:
        answer: the raw annotation value (numbers are accepted: ``str()`` is applied first).

    Returns:
        The normalised answer string, e.g. ``"Two"`` -> ``"2"``, ``"the left lung."`` -> ``"left lung"``.
    """
    text = str(answer).lower()
    original = text
    split_numbers = _DIGIT_COMMA_DIGIT.search(original) is not None
    for mark in _PUNCTUATION:
        touches_space = (mark + " " in original) or (" " + mark in original)
        text = text.replace(mark, "" if touches_space or split_numbers else " ")
    text = _PERIOD.sub("", text, PERIOD_SUB_COUNT)
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")
