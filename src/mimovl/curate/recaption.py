"""recaption: caption images again with a model, keeping a new caption only when it is not repetitive.

    python -m mimovl.curate recaption --input 'data/cap-*.tar' --out 'cur/recap/cap-%06d.tar' --model DIR \
        [--prompt "Describe this image."] [--max-new-tokens 128] [--batch-size 32] [--config filter.yaml]

The model runs in the project's vLLM wrapper (mimovl.generate.engines.VLLMRollout over DIR, any Qwen2.5-VL-format
export), greedy, one prompt per caption sample with exactly one image: a user turn holding the image and
--prompt, built as a mimovl.generate.prompts.Prompt. Any object with the engine's
`generate(prompts, sampling, processor)` serves (tests pass a small fake one).
A new caption replaces the sample's text parts (meta["original_caption"] keeps the old text) unless it is
empty, stopped at --max-new-tokens, or fails the filter step's repetition checks (repeated_ngrams,
repeated_substring, thresholds from FilterConfig / --config); then the original stays and the report counts
why under stats.kept_original. No sample is removed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

from mimovl.curate.runner import Item, Report, Step
from mimovl.curate.textfilter import FilterConfig, repetition_problem
from mimovl.data.schema import image, text
from mimovl.errors import UsageError
from mimovl.generate.prompts import Prompt
from mimovl.generate.engines import Sampling

DEFAULT_PROMPT = "Describe this image."


class Recaption(Step):
    name = "recaption"
    default_types = ("caption",)

    def __init__(self, model: str | None = None, engine=None, processor=None, prompt: str = DEFAULT_PROMPT,
                 max_new_tokens: int = 128, batch_size: int = 32, config: FilterConfig | None = None,
                 engine_settings: dict | None = None, types=None):
        super().__init__(types)
        if (model is None) == (engine is None):
            raise ValueError("give either a model directory or an engine object")
        if model is not None and not Path(model).is_dir():
            raise UsageError(f"--model {model}: not a directory (a Qwen2.5-VL-format export)")
        self.model, self.engine, self.processor = model, engine, processor
        self.prompt, self.max_new_tokens, self.batch_size = prompt, max_new_tokens, batch_size
        self.config = config or FilterConfig()
        self.engine_settings = dict(engine_settings or {})
        self.kept_original: Counter = Counter()
        self.recaptioned = 0

    def params(self) -> dict:
        engine = str(self.model) if self.model is not None else f"object:{type(self.engine).__qualname__}"
        return {"engine": engine, "engine_settings": self.engine_settings, "prompt": self.prompt,
                "max_new_tokens": self.max_new_tokens, "filter": asdict(self.config)}

    def input_files(self) -> list[str]:
        """The model's files: other weights or settings rerun the step."""
        if self.model is None:
            return []
        return sorted(str(p) for p in Path(self.model).iterdir() if p.suffix in (".json", ".safetensors", ".jinja"))

    def prepare(self, read) -> None:
        if self.engine is None:  # started here, not in __init__, so a finished run skips without starting it
            from mimovl.model.processor import load_processor
            from mimovl.generate.engines import VLLMRollout

            settings = {"limit_mm_per_prompt": {"image": 1}, **self.engine_settings}
            self.engine = VLLMRollout(self.model, **settings)
            self.processor = load_processor(self.model)

    def process(self, items: list[Item], report: Report) -> list[dict | None]:
        chosen = [item for item in items if len(item.sample["images"]) == 1]
        if len(chosen) < len(items):
            self.kept_original["not_one_image"] += len(items) - len(chosen)
        captions = {}
        if chosen:
            prompts = [self._prompt(item) for item in chosen]
            sampling = Sampling(n=1, temperature=0.0, max_new_tokens=self.max_new_tokens)
            groups = self.engine.generate(prompts, sampling, self.processor)
            captions = {item.key: group[0] for item, group in zip(chosen, groups)}
        records = []
        for item in items:
            completion = captions.get(item.key)
            if completion is None:
                records.append(item.record())
                continue
            caption = completion.text.strip()
            reason = self._rejection(caption, completion.finished)
            if reason is not None:
                self.kept_original[reason] += 1
                records.append(item.record())
                continue
            self.recaptioned += 1
            report.modified += 1
            records.append(self._recaptioned(item, caption))
        return records

    def _prompt(self, item: Item) -> Prompt:
        messages = [{"role": "user", "content": [image(), text(self.prompt)]}]
        sample = {**item.sample, "type": "qa", "messages": messages, "videos": []}
        return Prompt(key=item.key, task=None, answer=None, sample=sample)

    def _rejection(self, caption: str, finished: bool) -> str | None:
        if not caption:
            return "empty"
        if not finished:
            return "unfinished"
        problem = repetition_problem(caption, self.config)
        return problem[0] if problem else None

    def _recaptioned(self, item: Item, caption: str) -> dict:
        old = []
        messages = []
        for m in item.header["messages"]:
            parts, placed = [], False
            for p in m["content"]:
                if p["type"] != "text":
                    parts.append(p)
                    continue
                old.append(p["text"])
                if not placed:
                    parts.append(text(caption))
                    placed = True
            messages.append({**m, "content": parts})
        if not old:  # a caption document of images only: the caption goes after them
            messages[-1]["content"].append(text(caption))
        meta = {**item.header["meta"], "original_caption": "\n".join(old)}
        return item.updated(messages=messages, meta=meta)

    def finish(self) -> dict:
        return {"recaptioned": self.recaptioned, "kept_original": dict(sorted(self.kept_original.items()))}
