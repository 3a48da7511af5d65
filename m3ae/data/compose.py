"""Captions from VQA annotations: one text per image composed from that image's own QA pairs.

A VQA folder says many things about an image ("what modality?" "ct", "which plane?" "axial",
"what is abnormal?" "cryptococcal pneumonia"). `compose_texts` turns them into a caption such as
"axial ct angiography of the lung, mediastinum, pleura: cryptococcal pneumonia in an
immunocompetent host". The rules (docs/data.md, "Composition rules"):

* a **header** "<plane> <modality> of the <organ>" from the image's metadata (SLAKE modality and
  location, VQA-RAD organ) and the first open answer of the modality, plane and organ questions;
* then **clauses**, "; "-separated: VQA-Med's abnormality answers as they are, other open QA pairs
  rewritten by a few templates ("what is the largest organ?" "liver" -> "the largest organ is
  liver"), yes/no pairs turned into statements ("does the picture contain liver?" "no" -> "the
  picture does not contain liver"); a pair no template fits is left out and counted.

Everything is lower case. Pure functions of strings; nothing here reads files.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

HEADER_ROLES = ("plane", "modality", "organ")
CATEGORY_ROLES: dict[str, dict[str, str]] = {
    "vqa-med-2019": {"Modality": "modality", "Plane": "plane", "Organ": "organ", "Abnormality": "diagnosis"},
    "slake": {"Modality": "modality", "Plane": "plane"},
    "vqa-rad": {"MODALITY": "modality", "PLANE": "plane"},
}
"""Dataset -> question category -> role; other categories are "finding" (rewritten by templates).
"diagnosis" answers are kept as they are (VQA-Med's abnormality answers are whole diagnoses)."""
META_ROLES = {"modality": "modality", "location": "organ", "organ": "organ"}
"""Image metadata field (metadata.json) -> header role; metadata wins over answers."""
WORDS = {"abd": "abdomen", "t1": "t1-weighted mri", "t2": "t2-weighted mri", "flair": "flair mri",
         "contrast": "contrast-enhanced image", "noncontrast": "non-contrast image",
         "iv": "image with iv contrast", "gi": "image with gi contrast"}
"""Whole answers that read badly in a header, and what the header says instead."""
YES, NO = "yes", "no"
_SUBJECT_NOUNS = "image|picture|scan|film|study|mri|ct|x-ray|radiograph"

# (pattern over the lower-cased question without "?", statement if yes, statement if no)
YES_NO_RULES: tuple[tuple[re.Pattern, str, str], ...] = tuple((re.compile(p), y, n) for p, y, n in (
    (r"^is there (?P<art>an? )?(?:any )?(?P<x>.+)$", "there is {art}{x}", "there is no {x}"),
    (r"^are there (?P<art>an? )(?P<x>.+)$", "there is {art}{x}", "there is no {x}"),  # "are there a mass"
    (r"^are there (?:any )?(?P<x>.+)$", "there are {x}", "there are no {x}"),
    (rf"^(?P<v>is|was) (?P<s>(?:this|that)(?: (?:{_SUBJECT_NOUNS}))?|it) (?P<x>.+)$", "{s} {v} {x}", "{s} {v} not {x}"),
    # one-word subjects only: "is the pelvis of the left kidney dilated" has no safe statement
    (r"^(?P<v>is|are|was|were) (?P<s>the (?!left |right )[\w-]+|[\w-]+ contrast) (?!(?:of|in|on|at|to|from) )(?P<x>.+)$",
     "{s} {v} {x}", "{s} {v} not {x}"),
    (r"^does (?P<s>(?:the|this) [\w-]+) (?P<verb>[\w-]+) (?P<x>.+)$", "{s} {verb_s} {x}", "{s} does not {verb} {x}"),
))
OPEN_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), t) for p, t in (
    (r"^(?:what|which) (?P<v>is|are) the (?P<x>.+)$", "the {x} {v} {a}"),
    (r"^where (?P<v>is|are) the (?P<x>.+?)(?: (?:located|seen|visible|found))?$", "location of the {x}: {a}"),
    # "what level is this image" asks for a property of what follows: "level of this image: l2"
    (r"^what (?:is|are) (?P<x>abnormal|wrong)(?P<rest>.*)$", "{x}{rest}: {a}"),
    (r"^(?:what|which) (?P<n>[\w/-]+(?: [\w-]+)?) (?:is|are|was|were) (?P<x>(?:the|this|these) .+?)"
     r"(?: (?:located|seen|visible|found|on|in|at|of))?$", "{n} of {x}: {a}"),
    (r"^(?:what|which) [\w/-]+(?: [\w-]+)? (?P<v>is|are|was|were) (?P<x>.+)$", "{a} {v} {x}"),
    (r"^how many (?P<x>[\w-]+) (?P<rest>.+)$", "{a} {x} {rest}"),
))


@dataclass
class QA:
    """One question about an image."""

    question: str
    answer: str
    category: str | None = None


@dataclass
class ImageQA:
    """Everything a VQA folder says about one image."""

    image_id: str
    meta: dict[str, str] = field(default_factory=dict)
    questions: list[QA] = field(default_factory=list)


def _clean(text: str) -> str:
    """Lower case, one space between words, no trailing "?" or "." (the original case is noise)."""
    return re.sub(r"\s+", " ", str(text)).strip().lower().rstrip("?. ").replace("is/are", "are")


def _question(text: str) -> str:
    """A question without its offered choices: "which organ is abnormal, heart or lung" -> "...abnormal"."""
    text = _clean(str(text).split("?")[0])  # VQA-RAD: "are the masses cystic? -yes/no"
    return re.sub(r",\s*[^,]+(?:,[^,]+)* or [^,]+$", "", text)


def header_word(answer: str) -> str:
    """An answer as a header word: "cta - ct angiography" -> "ct angiography"; `WORDS` applied."""
    answer = _clean(answer)
    answer = answer.split(" - ", 1)[1] if " - " in answer else answer
    return WORDS.get(answer, answer)


def yes_no_statement(question: str, answer: str) -> str | None:
    """A yes/no pair as a statement, or None when no `YES_NO_RULES` pattern fits the question."""
    question = _question(question)
    for pattern, yes, no in YES_NO_RULES:
        found = pattern.match(question)
        if found:
            parts = {k: v or "" for k, v in found.groupdict().items()}
            if "verb" in parts:
                parts["verb_s"] = "has" if parts["verb"] == "have" else parts["verb"] + "s"
            return (yes if _clean(answer) == YES else no).format(**parts)
    return None


def open_clause(question: str, answer: str) -> str | None:
    """An open pair as a clause, or None when no `OPEN_RULES` pattern fits the question."""
    question = _question(question)
    for pattern, template in OPEN_RULES:
        found = pattern.match(question)
        if found:
            return template.format(a=_clean(answer), **found.groupdict())
    return None


def header(roles: dict[str, str]) -> str:
    """"<plane> <modality> of the <organ>" from whichever of the three are known ("" if none)."""
    if roles.get("plane") and not roles.get("modality"):
        roles = {**roles, "modality": "image"}  # "sagittal image of the ...", not "sagittal of the ..."
    what = " ".join(roles[r] for r in ("plane", "modality") if roles.get(r))
    if roles.get("organ"):
        return f"{what or 'image'} of the {roles['organ']}"
    return what


def _role(dataset: str, category: str | None) -> str:
    return CATEGORY_ROLES.get(dataset, {}).get(category or "", "finding")


def _clause(dataset: str, qa: QA, dropped: Counter) -> str | None:
    """The clause one QA pair contributes (None: header material, or no rule fits: counted)."""
    answer, role = _clean(qa.answer), _role(dataset, qa.category)
    if not answer:
        return None
    if answer in (YES, NO):
        statement = yes_no_statement(qa.question, answer)
        dropped["yes_no_unmatched"] += statement is None
        return statement
    if role in HEADER_ROLES:
        return None
    if role == "diagnosis":
        return answer
    clause = open_clause(qa.question, answer)
    dropped["open_unmatched"] += clause is None
    return clause


def header_roles(dataset: str, image: ImageQA) -> dict[str, str]:
    """Plane, modality and organ of an image: metadata first, then the first open answer."""
    roles = {META_ROLES[k]: header_word(v) for k, v in image.meta.items() if k in META_ROLES and v}
    for qa in image.questions:
        role, answer = _role(dataset, qa.category), _clean(qa.answer)
        if role in HEADER_ROLES and answer and answer not in (YES, NO):
            roles.setdefault(role, header_word(answer))
    return roles


def compose_texts(dataset: str, image: ImageQA, per: str = "image") -> tuple[list[str], Counter]:
    """The texts of one image, and how many QA pairs were left out by reason.

    Args:
        dataset: the source's dataset name (``summary.json``), which picks `CATEGORY_ROLES`.
        image: the image's metadata and QA pairs, in the folder's order.
        per: "image": one text, header + every clause; "category": one text per question
            category, header + that category's clauses (duplicates dropped).
    """
    dropped: Counter = Counter()
    top = header(header_roles(dataset, image))
    groups: dict[str, list[str]] = {}
    for qa in sorted(image.questions, key=lambda qa: _role(dataset, qa.category) != "diagnosis"):
        clause = _clause(dataset, qa, dropped)
        group = groups.setdefault((qa.category or "") if per == "category" else "", [])
        if clause and clause not in group:
            group.append(clause)
    texts = []
    for clauses in groups.values() or [[]]:
        text = f"{top}: {'; '.join(clauses)}" if top and clauses else top or "; ".join(clauses)
        if text and text not in texts:
            texts.append(text)
    return texts, dropped
