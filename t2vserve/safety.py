"""Content safety: the prompt filter of ``preprocess`` and the output-check hook of ``postprocess``.

**Prompt filter.** Categories of terms and regular expressions, read from a JSON file named by
``preprocess``'s config parameter ``safety_filter`` (default ``spec.SAFETY_FILTER_FILE``, shipped in
``t2vserve/data/``: placeholder categories, a starting point for operators)::

    {"categories": {"<category>": {"terms": ["word", "two words"], "patterns": ["regex"]}}}

A prompt that matches is refused with INVALID_ARG: ``PROMPT: refused by the safety filter (category:
<category>)``. The message names the category, never the text that matched. ``safety_filter_enabled``
``false`` turns the filter off (research deployments). Only PROMPT is checked: a negative prompt
steers away from what it names, and blocked terms are exactly what operators put there.

**Output check.** ``postprocess``'s config parameter ``output_check`` names a callable (uint8 video
[F, H, W, 3] -> a category to refuse, or None): a name in ``OUTPUT_CHECKS`` or ``package.module:function``;
default ``none``. A refused clip is answered like a refused prompt, naming the check's category.
"""

from __future__ import annotations

import importlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .params import ParameterError

DATA_DIR = Path(__file__).parent / "data"

#: Leetspeak-lite: digits and symbols read as the letters they imitate.
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "+": "t"})
#: At least this many one-character words in a row are read as one spaced-out word ("s p a c e d").
SPACED_RUN = 3


class ContentRefused(ParameterError):
    """A prompt or a generated clip refused by a safety check; the message names the category only."""

    def __init__(self, category: str, check: str = "safety filter") -> None:
        super().__init__("PROMPT", f"refused by the {check} (category: {category})")
        self.category = category


def _fold(text: str) -> str:
    """Compatibility forms (full-width, ligatures) to plain ones, accents and invisible format characters dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    return "".join(c for c in decomposed if not unicodedata.combining(c) and unicodedata.category(c) != "Cf").casefold()


def _words(text: str) -> str:
    """Letters and digits only, one space between words (punctuation and underscores separate words)."""
    return " ".join(re.findall(r"[^\W_]+", text))


def normalized_forms(text: str) -> tuple[str, str, str]:
    """The forms a prompt is checked in, against trivial evasion.

    1. *folded*: NFKC then NFKD without combining marks ("Ｂáｄ" -> "bad"), format characters such as
       zero-width spaces removed, casefolded; punctuation and spacing kept (for patterns).
    2. *words*: the folded text reduced to its words: punctuation, underscores and runs of whitespace
       become one space ("b.a-d" -> "b a d").
    3. *leet*: like 2 after leetspeak-lite (``LEET``: "b4d" -> "bad", "k!ll" -> "kill"; a closing "!!!"
       stays punctuation). Form 2 is kept beside it: "1990s" stays a number there.
    Runs of SPACED_RUN or more one-character words ("b a d") are also read joined (``spaced_runs``).
    Not a classifier: misspellings, synonyms and other languages need terms or patterns of their own.
    """
    folded = _fold(text)
    exclaimed = re.sub(r"!+(?=\W|$)", " ", folded)  # a word's closing "!!!" is punctuation, not "iii"
    return folded, _words(folded), _words(exclaimed.translate(LEET))


def spaced_runs(words: str) -> list[str]:
    """Runs of SPACED_RUN or more one-character words, joined ("a b a d c a t" -> ["abadcat"])."""
    run = rf"(?<!\S)(?:[^\W_] ){{{SPACED_RUN - 1},}}[^\W_](?!\S)"
    return [match.group(0).replace(" ", "") for match in re.finditer(run, words)]


@dataclass(frozen=True)
class Category:
    """One category's checks, compiled: terms as whole words of the normalised text, patterns as regular expressions."""

    name: str
    terms: re.Pattern | None
    squashed_terms: tuple[str, ...]  # the terms without spaces: searched inside spaced-out runs
    patterns: tuple[re.Pattern, ...]

    @classmethod
    def build(cls, name: str, terms: list[str], patterns: list[str]) -> "Category":
        normalized = sorted({_words(_fold(term)) for term in terms} - {""}, key=len, reverse=True)
        alternation = "|".join(re.escape(term) for term in normalized)
        compiled = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)") if normalized else None
        return cls(name, compiled, tuple(t.replace(" ", "") for t in normalized), tuple(re.compile(p) for p in patterns))

    def matches(self, forms: tuple[str, str, str], runs: list[str]) -> bool:
        """``forms``: ``normalized_forms`` of the text; ``runs``: its spaced-out runs, joined."""
        _, words, leet = forms
        if self.terms is not None and any(self.terms.search(form) for form in (words, leet)):
            return True
        if any(term in run for run in runs for term in self.squashed_terms):
            return True
        return any(pattern.search(form) for pattern in self.patterns for form in forms)


class PromptFilter:
    """Categories of terms and patterns; ``category_of`` says which one a text falls in (file order)."""

    def __init__(self, categories: list[Category]) -> None:
        self.categories = categories

    @classmethod
    def from_dict(cls, data: dict) -> "PromptFilter":
        categories = data.get("categories")
        if not isinstance(categories, dict):
            raise ValueError("a safety filter file needs a 'categories' object: {name: {terms: [...], patterns: [...]}}")
        return cls([Category.build(name, spec.get("terms", []), spec.get("patterns", [])) for name, spec in categories.items()])

    @classmethod
    def load(cls, path: Path) -> "PromptFilter":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def category_of(self, text: str) -> str | None:
        forms = normalized_forms(text)
        runs = spaced_runs(forms[1]) + spaced_runs(forms[2])
        return next((category.name for category in self.categories if category.matches(forms, runs)), None)

    def check(self, prompt: str) -> None:
        """Raise ContentRefused (INVALID_ARG naming PROMPT and the category) if ``prompt`` matches."""
        category = self.category_of(prompt)
        if category is not None:
            raise ContentRefused(category)


def configured_filter(name: str, enabled: str, model_dir: Path) -> PromptFilter | None:
    """The filter ``preprocess``'s config asks for: file ``name`` (``find_filter_file``), or None when ``enabled`` is false."""
    switch = enabled.strip().lower()
    if switch not in ("true", "false"):
        raise ValueError(f"config parameter safety_filter_enabled must be true or false, got {enabled!r}")
    return PromptFilter.load(find_filter_file(name, model_dir)) if switch == "true" else None


def find_filter_file(name: str, model_dir: Path) -> Path:
    """``name`` as given if absolute, else in the model's version directory, else in ``t2vserve/data/``."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else [Path(model_dir) / path, DATA_DIR / path]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"safety filter file {name!r} not found (looked in {', '.join(str(c) for c in candidates)})")
    return found


# --------------------------------------------------------------------------------------------------
# Output check hook
# --------------------------------------------------------------------------------------------------
#: uint8 video [frames, height, width, 3] -> the category to refuse it under, or None to let it through.
OutputCheck = Callable[[np.ndarray], "str | None"]

#: Below this standard deviation (uint8 levels over the whole clip) a clip counts as blank.
BLANK_STD_LEVELS = 1.0


def blank_clip(video: np.ndarray) -> str | None:
    """Example check: refuse a clip with (almost) no content, one flat colour throughout ("blank")."""
    return "blank" if float(video.astype(np.float32).std()) < BLANK_STD_LEVELS else None


#: Output checks by config name; ``package.module:function`` names any other.
OUTPUT_CHECKS: dict[str, OutputCheck | None] = {"none": None, "blank_clip": blank_clip}


def load_output_check(name: str) -> OutputCheck | None:
    """The check ``name`` (``none``: no check); an unknown name fails at model load, not per request."""
    if name in OUTPUT_CHECKS:
        return OUTPUT_CHECKS[name]
    module, separator, attribute = name.partition(":")
    if not separator:
        raise ValueError(f"unknown output check {name!r}; known: {', '.join(OUTPUT_CHECKS)}, or package.module:function")
    return getattr(importlib.import_module(module), attribute)


def run_output_check(check: OutputCheck | None, video: np.ndarray) -> None:
    """Raise ContentRefused if ``check`` refuses ``video``."""
    category = None if check is None else check(video)
    if category is not None:
        raise ContentRefused(category, "output check")
