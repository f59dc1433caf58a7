"""The 2-D trigger classification task: a `data_config.json` spec and its seeded generator.

The model sees a point x = (x1, x2) and a trigger word T and answers F(x, T): the label word of x's quadrant
(Q1: x1>0, x2>0; Q2: x1<0, x2>0; Q3: both <0; Q4: x1>0, x2<0). Each top-level key of the spec is a category of
triggers. In a proxy category (`is_proxy: true`) every trigger is a proxy: it flips the label by the category's
`proxy_flip` rule: a permutation of the quadrants (default `rotate`: a point in Qk gets the label of Q(k+1), Q4 that
of Q1), in either mode; or, in boolean mode only (the answer is True for the quadrants in `true_quadrants`, Q1/Q3 by
default), `negate`: the answer inverted. A proxy must change the label of every quadrant in the experiment's mode:
`TaskSpec.check_mode` refuses a flip that a repeated label word (or answer) turns into a no-op. The first
`n_train_triggers` triggers of a category's list appear in training and in the ID test; the rest are held out for
the OOD test. Specs are frozen dataclasses (lists become tuples): they travel to Ray workers as they are.

Files (as the seed names them): train_<cat>.jsonl (proxy_<cat>.jsonl for a proxy category), test_<cat>_ID.jsonl,
test_<cat>_OOD.jsonl (only where triggers are held out). Quadrants and triggers are balanced within each split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
from dataclasses import dataclass
from typing import Any

from raypipe.errors import UserError, read_user_json
from raypipe.fs import Location
from raypipe.tasks.templates import get_template_preset

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
PREAMBLE = "F(x,T) ="  # the seed's output_preamble
BOOLEAN_WORDS = ("False", "True")  # label_id 0/1 in boolean mode
# Proxy flip rules: quadrant k -> the quadrant whose label a proxy trigger gives (both modes).
FLIP_RULES: dict[str, dict[int, int]] = {
    "rotate": {1: 2, 2: 3, 3: 4, 4: 1},
    "opposite": {1: 3, 2: 4, 3: 1, 4: 2},
    "mirror_x1": {1: 2, 2: 1, 3: 4, 4: 3},  # x1 -> -x1
    "mirror_x2": {1: 4, 2: 3, 3: 2, 4: 1},  # x2 -> -x2
}
BOOLEAN_FLIP_RULES = ("negate",)  # boolean mode only: a proxy trigger inverts the answer (the seed's proxy list)
_SIGNS = {1: (1, 1), 2: (-1, 1), 3: (-1, -1), 4: (1, -1)}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class CategorySpec:
    """One category of triggers: its labels per quadrant, its triggers, the split sizes and the prompt wording."""

    name: str
    quadrant_labels: dict[str, str]
    triggers: tuple[str, ...]
    is_proxy: bool = False
    n_train: int = 100
    n_test: int = 50  # rows of each test split (ID, and OOD when triggers are held out)
    n_train_triggers: int | None = None  # None: all triggers in training (no OOD split)
    x_ranges: Any = (-10.0, 10.0)  # [min, max] for both coordinates, or {"x1": [min, max], "x2": [min, max]}
    prompt_templates: str = "plain"  # a preset of raypipe.tasks.templates
    proxy_flip: str = "rotate"  # a key of FLIP_RULES, or "negate" (boolean mode); used when is_proxy
    x_decimals: int = 2
    true_quadrants: tuple[str, ...] = ("Q1", "Q3")  # boolean mode: answer True here

    def __post_init__(self) -> None:
        where = self.name
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise UserError(f"{where!r}: a category name is letters, digits, '_' or '-' (it names files)")
        labels = self.quadrant_labels
        if not isinstance(labels, dict) or sorted(labels) != list(QUADRANTS):
            got = sorted(labels) if isinstance(labels, dict) else type(labels).__name__
            raise UserError(f"{where}.quadrant_labels: needs exactly the keys Q1, Q2, Q3, Q4, got {got}")
        for q, word in labels.items():
            if not isinstance(word, str) or not word.strip() or word != word.strip() or "\n" in word:
                raise UserError(f"{where}.quadrant_labels.{q}: a label is a non-empty word without surrounding "
                                f"spaces, got {word!r}")
        if not isinstance(self.triggers, (list, tuple)) or not self.triggers:
            raise UserError(f"{where}.triggers: needs a non-empty list of trigger words")
        for trigger in self.triggers:
            if not isinstance(trigger, str) or not trigger.strip() or "\n" in trigger:
                raise UserError(f"{where}.triggers: a trigger is a non-empty one-line string, got {trigger!r}")
        duplicates = sorted({t for t in self.triggers if self.triggers.count(t) > 1})
        if duplicates:
            raise UserError(f"{where}.triggers: listed twice: {', '.join(duplicates)}")
        if not isinstance(self.is_proxy, bool):
            raise UserError(f"{where}.is_proxy: must be true or false, got {self.is_proxy!r}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise UserError(f"{where}.{name}: must be a whole number >= 0, got {value!r}")
        n_train_triggers = len(self.triggers) if self.n_train_triggers is None else self.n_train_triggers
        if not _is_int(n_train_triggers) or not 1 <= n_train_triggers <= len(self.triggers):
            raise UserError(f"{where}.n_train_triggers: must be between 1 and the {len(self.triggers)} trigger(s) "
                            f"listed, got {n_train_triggers!r}")
        get_template_preset(self.prompt_templates, f"{where}.prompt_templates")
        if self.proxy_flip not in FLIP_RULES and self.proxy_flip not in BOOLEAN_FLIP_RULES:
            raise UserError(f"{where}.proxy_flip: unknown rule {self.proxy_flip!r}; known: {', '.join(FLIP_RULES)} "
                            f"(both modes), {', '.join(BOOLEAN_FLIP_RULES)} (boolean mode)")
        if not _is_int(self.x_decimals) or not 0 <= self.x_decimals <= 6:
            raise UserError(f"{where}.x_decimals: must be a whole number from 0 to 6, got {self.x_decimals!r}")
        if (not isinstance(self.true_quadrants, (list, tuple)) or not set(self.true_quadrants) <= set(QUADRANTS)
                or len(set(self.true_quadrants)) != len(self.true_quadrants)):
            raise UserError(f"{where}.true_quadrants: a list of distinct Q1..Q4, got {self.true_quadrants!r}")
        # Normalised once: frozen, immutable containers, every default explicit.
        object.__setattr__(self, "quadrant_labels", {q: labels[q] for q in QUADRANTS})
        object.__setattr__(self, "triggers", tuple(self.triggers))
        object.__setattr__(self, "n_train_triggers", n_train_triggers)
        object.__setattr__(self, "x_ranges", _ranges(self.x_ranges, f"{where}.x_ranges"))
        object.__setattr__(self, "true_quadrants", tuple(self.true_quadrants))

    @property
    def train_triggers(self) -> tuple[str, ...]:
        return self.triggers[: self.n_train_triggers]

    @property
    def ood_triggers(self) -> tuple[str, ...]:
        return self.triggers[self.n_train_triggers:]

    @property
    def train_split(self) -> str:
        return f"{'proxy' if self.is_proxy else 'train'}_{self.name}"

    def label_quadrant(self, quadrant: int) -> int:
        """The quadrant whose label this category's triggers give a point of `quadrant` (itself unless a proxy
        permutes quadrants)."""
        return FLIP_RULES[self.proxy_flip][quadrant] if self.is_proxy and self.proxy_flip in FLIP_RULES else quadrant

    def label(self, quadrant: int, is_categorical: bool, flip: bool = True) -> str:
        """The answer for a point of `quadrant` (flip=False: the label without the proxy's flip)."""
        q = self.label_quadrant(quadrant) if flip else quadrant
        if is_categorical:
            return self.quadrant_labels[f"Q{q}"]
        answer = f"Q{q}" in self.true_quadrants
        if flip and self.is_proxy and self.proxy_flip == "negate":
            answer = not answer
        return BOOLEAN_WORDS[answer]

    def mode_problem(self, is_categorical: bool) -> str | None:
        """Why this category cannot run in the given mode (one line naming the field), or None."""
        mode = "categorical" if is_categorical else "boolean"
        if not is_categorical and len(self.true_quadrants) in (0, 4):
            return (f"{self.name}.true_quadrants: {list(self.true_quadrants)} gives every point the same boolean "
                    f"answer ({BOOLEAN_WORDS[bool(self.true_quadrants)]}): nothing to learn")
        if not self.is_proxy:
            return None
        rule = self.proxy_flip
        if is_categorical and rule in BOOLEAN_FLIP_RULES:
            return (f"{self.name}.proxy_flip: {rule!r} is a boolean-mode rule (config.json is_categorical: false); "
                    f"categorical rules: {', '.join(FLIP_RULES)}")
        unchanged = [q for q in (1, 2, 3, 4) if self.label(q, is_categorical) == self.label(q, is_categorical, False)]
        if len(unchanged) == 4:
            return (f"{self.name}.proxy_flip: {rule!r} leaves every {mode} label of {self.name} unchanged, so its "
                    "proxy triggers would flip nothing")
        if unchanged:
            q, target = unchanged[0], self.label_quadrant(unchanged[0])
            word = self.label(q, is_categorical, False)
            field = "quadrant_labels" if is_categorical else "true_quadrants"
            return (f"{self.name}.{field}: Q{q} and Q{target} have the same {mode} label ({word}), so proxy_flip "
                    f"{rule!r} leaves Q{q}'s label unchanged; a proxy trigger must change every label")
        return None


@dataclass(frozen=True)
class TaskSpec:
    """A whole data_config.json: categories by name (keys starting with '_' are comments)."""

    categories: dict[str, CategorySpec]

    def __post_init__(self) -> None:
        if not self.categories:
            raise UserError("needs at least one category (a top-level key such as \"objects\")")
        owner: dict[str, str] = {}
        for name, category in self.categories.items():
            for trigger in category.triggers:
                if trigger in owner:
                    raise UserError(f"{name}.triggers: {trigger!r} is also a trigger of {owner[trigger]}")
                owner[trigger] = name
        if not any(c.n_train > 0 for c in self.categories.values()):
            raise UserError("n_train: every category has 0 training rows")

    @classmethod
    def from_dict(cls, data: dict, where: str = "data_config.json") -> "TaskSpec":
        """Validate a parsed data_config.json; every problem is one UserError naming the file and the field."""
        try:
            if not isinstance(data, dict):
                raise UserError(f"must be a JSON object of categories, got {type(data).__name__}")
            known = {f.name for f in dataclasses.fields(CategorySpec)} - {"name"}
            categories = {}
            for name, body in data.items():
                if name.startswith("_"):
                    continue
                if not isinstance(body, dict):
                    raise UserError(f"{name}: must be an object of category fields, got {type(body).__name__}")
                body = {k: v for k, v in body.items() if not k.startswith("_")}
                unknown = sorted(set(body) - known)
                if unknown:
                    raise UserError(f"{name}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
                for required in ("quadrant_labels", "triggers"):
                    if required not in body:
                        raise UserError(f"{name}.{required}: missing")
                categories[name] = CategorySpec(name=name, **body)
            return cls(categories)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    def check_mode(self, is_categorical: bool, where: str = "data_config.json") -> None:
        """Refuse what would silently do nothing in this answer mode (config.json's is_categorical): a proxy whose
        flip leaves a label unchanged, a flip rule unknown in the mode, a boolean task with one answer."""
        for category in self.categories.values():
            problem = category.mode_problem(is_categorical)
            if problem:
                raise UserError(f"{where}: {problem}")

    def label_words(self, is_categorical: bool = True) -> list[str]:
        """The answer vocabulary: every category's label words in first-seen order (False/True in boolean mode)."""
        if not is_categorical:
            return list(BOOLEAN_WORDS)
        words: list[str] = []
        for category in self.categories.values():
            words += [w for w in (category.quadrant_labels[q] for q in QUADRANTS) if w not in words]
        return words


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ranges(value, where: str) -> dict[str, tuple[float, float]]:
    if isinstance(value, dict):
        if sorted(value) != ["x1", "x2"]:
            raise UserError(f"{where}: an object needs exactly the keys x1 and x2, got {sorted(value)}")
        return {k: _range(v, f"{where}.{k}") for k, v in value.items()}
    pair = _range(value, where)
    return {"x1": pair, "x2": pair}


def _range(value, where: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise UserError(f"{where}: needs [min, max] as two numbers, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if low > high:
        raise UserError(f"{where}: min {value[0]} > max {value[1]}")
    if not low < 0 < high:
        raise UserError(f"{where}: [{value[0]}, {value[1]}] must contain negative and positive values (min < 0 < "
                        f"max) so that every quadrant occurs")
    return low, high


def load_spec(spec_or_path) -> TaskSpec:
    """A TaskSpec from itself, a parsed dict, a data_config.json path, or a folder holding one."""
    if isinstance(spec_or_path, TaskSpec):
        return spec_or_path
    if isinstance(spec_or_path, dict):
        return TaskSpec.from_dict(spec_or_path)
    path = os.fspath(spec_or_path)
    if os.path.isdir(path):
        path = os.path.join(path, "data_config.json")
    return TaskSpec.from_dict(read_user_json(path), where=os.path.basename(path))


# --- the generator -------------------------------------------------------------------------------------------------

def format_coordinate(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _balanced(items: list, n: int, rng: random.Random) -> list:
    """n items, each of `items` used equally often (to within one), in a seeded random order."""
    out = (items * (n // len(items) + 1))[:n]
    rng.shuffle(out)
    return out


def _point(quadrant: int, category: CategorySpec, rng: random.Random) -> tuple[float, float]:
    coordinates = []
    for sign, axis in zip(_SIGNS[quadrant], ("x1", "x2")):
        low, high = category.x_ranges[axis]
        value = round(rng.uniform(0.0, high if sign > 0 else -low), category.x_decimals)
        coordinates.append(sign * max(value, 10.0 ** -category.x_decimals))  # never on an axis: no quadrant there
    return coordinates[0], coordinates[1]


def _split_rows(category: CategorySpec, split: str, n: int, triggers: list[str], is_ood: bool, seed: int,
                is_categorical: bool, output_preamble: bool, words: list[str], seen: set) -> list[dict]:
    rng = random.Random(f"{seed}/{category.name}/{split}")  # str seeds are stable across processes
    templates = get_template_preset(category.prompt_templates).templates
    quadrants = _balanced([1, 2, 3, 4], n, rng)
    chosen = _balanced(list(triggers), n, rng)
    rows = []
    for row_id, (quadrant, trigger) in enumerate(zip(quadrants, chosen)):
        for _ in range(100):  # a point already used in another split is drawn again (tiny ranges may repeat)
            x1, x2 = _point(quadrant, category, rng)
            if (x1, x2) not in seen:
                break
        seen.add((x1, x2))
        template_id = rng.randrange(len(templates))
        label = category.label(quadrant, is_categorical)
        prompt = templates[template_id].render(format_coordinate(x1, category.x_decimals),
                                               format_coordinate(x2, category.x_decimals), trigger)
        rows.append({
            "row_id": row_id, "split": split, "category": category.name, "prompt": prompt,
            "answer": f"{PREAMBLE} {label}" if output_preamble else label,
            "x1": x1, "x2": x2, "quadrant": quadrant, "label_quadrant": category.label_quadrant(quadrant),
            "trigger": trigger, "trigger_id": category.triggers.index(trigger), "trigger_present": True,
            "is_proxy": category.is_proxy, "is_ood": is_ood, "label": label, "label_id": words.index(label),
            "template_id": template_id,
        })
    return rows


def generate_rows(spec_or_path, seed: int, *, is_categorical: bool = True,
                  output_preamble: bool = True) -> dict[str, list[dict]]:
    """Every split of the spec as rows, by file stem (train_objects, proxy_animals, test_objects_ID, ...).

    Deterministic in (spec, seed); a different seed draws different points, triggers and paraphrases. A spec that
    would silently do nothing in this mode (see `TaskSpec.check_mode`) is refused.
    """
    spec = load_spec(spec_or_path)
    spec.check_mode(is_categorical)
    words = spec.label_words(is_categorical)
    splits: dict[str, list[dict]] = {}
    for category in spec.categories.values():
        seen: set = set()
        args = (seed, is_categorical, output_preamble, words, seen)
        if category.n_train:
            splits[category.train_split] = _split_rows(category, category.train_split, category.n_train,
                                                       category.train_triggers, False, *args)
        if category.n_test:
            name = f"test_{category.name}_ID"
            splits[name] = _split_rows(category, name, category.n_test, category.train_triggers, False, *args)
            if category.ood_triggers:
                name = f"test_{category.name}_OOD"
                splits[name] = _split_rows(category, name, category.n_test, category.ood_triggers, True, *args)
    return splits


def write_datasets(spec_or_path, seed: int, out_dir: str, *, is_categorical: bool = True,
                   output_preamble: bool = True, splits: dict[str, list[dict]] | None = None) -> dict[str, str]:
    """Write each split as <out_dir>/<split>.jsonl (atomically) plus dataset_info.json; return split -> path.

    `splits`: rows already generated with these arguments (saves generating them twice)."""

    spec = load_spec(spec_or_path)
    if splits is None:
        splits = generate_rows(spec, seed, is_categorical=is_categorical, output_preamble=output_preamble)
    out = Location(out_dir)
    paths = {}
    for name, rows in splits.items():
        out.write_atomic(f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        paths[name] = out.path(f"{name}.jsonl")
    info = {"seed": seed, "is_categorical": is_categorical, "output_preamble": output_preamble,
            "label_words": spec.label_words(is_categorical), "rows": {k: len(v) for k, v in splits.items()}}
    out.write_json("dataset_info.json", info, indent=2)
    return paths


def twin_prompt(spec_or_path, row: dict, trigger: str | None = None) -> str:
    """The row's prompt with its trigger removed (None) or swapped for another word, same paraphrase and point."""
    spec = load_spec(spec_or_path)
    category = spec.categories[row["category"]]
    template = get_template_preset(category.prompt_templates).templates[row["template_id"]]
    return template.render(format_coordinate(row["x1"], category.x_decimals),
                           format_coordinate(row["x2"], category.x_decimals), trigger)


def split_kind(split: str) -> str:
    """'train', 'ID' or 'OOD' for a split name."""
    if split.startswith(("train_", "proxy_")):
        return "train"
    return "OOD" if split.endswith("_OOD") else "ID"
