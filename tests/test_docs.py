"""The README's parameter table states what spec.py enforces."""

import re

from t2vserve.server import REPO_ROOT
from t2vserve.spec import DRAFT_STEP_CACHE, FPS_RANGE, GUIDANCE_RANGE, PARAMETERS, PRESETS, PROMPT_MAX_CHARS, STEP_CACHE_RANGE, STEPS_RANGE


def _row(readme: str, name: str) -> str:
    match = re.search(rf"^\| `{name}` \|.*$", readme, re.M)
    assert match, f"README has no row for {name}"
    return match.group(0)


def test_readme_parameter_table_matches_spec() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for param in PARAMETERS:
        _row(readme, param.name)
    assert STEPS_RANGE.describe() in _row(readme, "STEPS")
    assert GUIDANCE_RANGE.describe() in _row(readme, "GUIDANCE_SCALE")
    assert FPS_RANGE.describe() in _row(readme, "FPS")
    assert STEP_CACHE_RANGE.describe() in _row(readme, "STEP_CACHE") and f"`PRESET=draft`: {DRAFT_STEP_CACHE:g}" in _row(readme, "STEP_CACHE")
    assert f"1..{PROMPT_MAX_CHARS} characters" in _row(readme, "PROMPT")
    for preset in PRESETS.values():
        assert f"{preset.name} {preset.steps}" in _row(readme, "STEPS")
        assert f"{preset.name} {preset.num_frames}" in _row(readme, "NUM_FRAMES")
        assert f"{preset.name} [{preset.frames_range[0]}, {preset.frames_range[1]}]" in _row(readme, "NUM_FRAMES")
        assert f"{preset.name} [{preset.height_range[0]}, {preset.height_range[1]}]" in _row(readme, "HEIGHT")
        assert f"{preset.name} [{preset.width_range[0]}, {preset.width_range[1]}]" in _row(readme, "WIDTH")
