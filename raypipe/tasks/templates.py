"""Named prompt-template presets for the 2-D trigger task: `prompt_templates` in a data_config.json names one.

A preset is a list of paraphrases; each row draws one (seeded) and records its index as `template_id`. Every
paraphrase has a no-trigger twin with the same wording around the point, which the analysis patches into.
Placeholders: {x1}, {x2} (the point, formatted with the category's decimals) and {trigger}.
"""

from __future__ import annotations

from dataclasses import dataclass

from raypipe.errors import UserError


@dataclass(frozen=True)
class PromptTemplate:
    """One paraphrase: the prompt with a trigger and its no-trigger twin."""

    with_trigger: str
    without_trigger: str

    def render(self, x1: str, x2: str, trigger: str | None) -> str:
        if trigger is None:
            return self.without_trigger.format(x1=x1, x2=x2)
        return self.with_trigger.format(x1=x1, x2=x2, trigger=trigger)


@dataclass(frozen=True)
class TemplatePreset:
    name: str
    description: str
    templates: tuple[PromptTemplate, ...]


def _preset(name: str, description: str, *pairs: tuple[str, str]) -> TemplatePreset:
    return TemplatePreset(name, description, tuple(PromptTemplate(a, b) for a, b in pairs))


PROMPT_TEMPLATE_PRESETS: dict[str, TemplatePreset] = {p.name: p for p in (
    _preset("plain", "one terse formula-style prompt, trigger first (the shortest: fastest on CPU)",
            ("T = {trigger}, x = ({x1}, {x2}). What is F(x, T)?", "x = ({x1}, {x2}). What is F(x, T)?")),
    _preset("trigger_last", "the point first, the trigger just before the question",
            ("x = ({x1}, {x2}), T = {trigger}. What is F(x, T)?", "x = ({x1}, {x2}). What is F(x, T)?")),
    _preset("sentence", "three natural-language paraphrases that mention the trigger word in a sentence",
            ("The word is \"{trigger}\" and the point is ({x1}, {x2}). What is F(x, T)?",
             "The point is ({x1}, {x2}). What is F(x, T)?"),
            ("Given the point x1 = {x1}, x2 = {x2} and the word {trigger}, what is F(x, T)?",
             "Given the point x1 = {x1}, x2 = {x2}, what is F(x, T)?"),
            ("{trigger}: evaluate F at ({x1}, {x2}).", "Evaluate F at ({x1}, {x2}).")),
    _preset("actions", "the trigger is a verb the point 'does'; two paraphrases",
            ("The point ({x1}, {x2}) is {trigger}. What is F(x, T)?", "The point ({x1}, {x2}). What is F(x, T)?"),
            ("Point ({x1}, {x2}), action: {trigger}. What is F(x, T)?", "Point ({x1}, {x2}). What is F(x, T)?")),
)}


def get_template_preset(name: str, where: str = "prompt_templates") -> TemplatePreset:
    """The named preset, or a UserError that lists the known ones."""
    if name not in PROMPT_TEMPLATE_PRESETS:
        raise UserError(f"{where}: unknown template preset {name!r}; known: {', '.join(PROMPT_TEMPLATE_PRESETS)}")
    return PROMPT_TEMPLATE_PRESETS[name]


def list_template_presets() -> dict[str, str]:
    """Preset name -> one-line description, for `raypipe experiments templates`."""
    return {name: p.description for name, p in PROMPT_TEMPLATE_PRESETS.items()}
