"""How a question becomes the model's input and a rationale its reply: one renderer for training,
evaluation and the teachers' ``chat=true`` sampling, so a student is evaluated on exactly the
tokens it learned from.

A model with a chat template (instruct models) gets each question as a user turn, with an optional
system turn and a configurable instruction; its reply is the rationale followed by the template's
end-of-turn text (``<|im_end|>``, ``<|eot_id|>``, ...), which the student must learn so it stops.
A model without a template keeps the plain prompt files of ``prompts/`` and an EOS token.

Prompt and reply are tokenized separately and concatenated, and the prompt's token ids are what
vLLM is given at evaluation (never text, which it would tokenize again, adding a second BOS to a
template that writes its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from data_schemas import InputError
from mcckd.prompts import load_prompt, render
from mcckd.settings import Settings

_PROBE = "Question text 7"
_SENTINEL = "MCCKD-REPLY-SENTINEL"


class ChatTemplateError(InputError):
    """The model's chat template cannot render what the pipeline needs (a user turn, a reply)."""


class ChatSettings(Settings):
    """How questions are put to a model with a chat template; part of the train and evaluate fingerprints."""

    use: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: the chat template when the tokenizer has one, else the plain prompt file"
    )
    system: str | None = Field(None, description="a system turn before the question (None: the template's default)")
    instruction: str = Field(
        "{question}\nLet's think step by step.",
        description="the user turn; {question} is replaced by the question text",
    )


@dataclass(frozen=True)
class Example:
    """One rationale of one question, as text: the rendered prompt and the reply the model writes.

    ``chat``: the prompt is a rendered chat template (it carries its own BOS) and the reply ends
    with the template's end of turn; otherwise the tokenizer adds its BOS and an EOS token follows.
    """

    group: str  # question id: rationales of one question share it
    prompt: str
    completion: str
    answer_span: tuple[int, int] | None = None  # character offsets of the answer in ``completion``
    chat: bool = False


def prompt_token_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    """The prompt's token ids, the same at training and generation: a chat template writes its own
    BOS, a plain prompt gets the tokenizer's."""
    return list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"])


def special_tokens(tokenizer) -> set[str]:
    """Every special token's text (named ones and added ones marked special, like <|im_end|>)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {t for t in tokenizer.all_special_tokens if t} | {a.content for a in added.values() if a.special}


def chat_messages(question: str, settings: ChatSettings) -> list[dict[str, str]]:
    """The chat turns of one question (also what an OpenAI-compatible chat server is sent)."""
    turns = [{"role": "system", "content": settings.system}] if settings.system else []
    return [*turns, {"role": "user", "content": settings.instruction.replace("{question}", question.strip())}]


class Renderer:
    """Renders questions and replies for one tokenizer; validates the chat template once, up front."""

    def __init__(self, tokenizer, template: str = "student", settings: ChatSettings | None = None, source: str = ""):
        """``template``: the plain prompt file for models without a chat template; ``source`` names
        the model in errors."""
        source = source or "the model"
        self.tokenizer = tokenizer
        self.settings = settings = settings or ChatSettings()
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if settings.use == "always" and not has_template:
            raise ChatTemplateError(f"{source}: chat use='always' but the tokenizer has no chat template")
        self.chat = has_template and settings.use != "never"
        self.plain_template = None if self.chat else load_prompt(template)
        self.end_of_turn = self._end_of_turn(source) if self.chat else ""
        stop = tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"][:1] if self.end_of_turn else []
        # Generation stops at the template's end of turn even where the model's EOS is another token.
        self.stop_token_ids: list[int] = stop or [tokenizer.eos_token_id]

    def messages(self, question: str) -> list[dict[str, str]]:
        return chat_messages(question, self.settings)

    def prompt_text(self, question: str, cot_format: str = "any") -> str:
        if not self.chat:
            return render(self.plain_template, question, cot_format)
        return self.tokenizer.apply_chat_template(self.messages(question), tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, question: str, cot_format: str = "any") -> list[int]:
        return prompt_token_ids(self.tokenizer, self.prompt_text(question, cot_format), self.chat)

    def reply(self, rationale: str) -> tuple[str, int]:
        """The reply text the model learns to write, and where the rationale starts in it."""
        return (rationale + self.end_of_turn, 0) if self.chat else (" " + rationale, 1)

    def example(
        self, group: str, question: str, rationale: str, answer_span: tuple[int, int] | None, cot_format: str = "any"
    ) -> Example:
        """One training example; ``answer_span`` is in characters of ``rationale``."""
        text, offset = self.reply(rationale)
        span = None if answer_span is None else (answer_span[0] + offset, answer_span[1] + offset)
        return Example(group, self.prompt_text(question, cot_format), text, span, chat=self.chat)

    def _end_of_turn(self, source: str) -> str:
        """What the template writes after an assistant reply, trailing whitespace aside."""
        try:
            prompt = self.tokenizer.apply_chat_template(
                self.messages(_PROBE), tokenize=False, add_generation_prompt=True
            )
            full = self.tokenizer.apply_chat_template(
                [*self.messages(_PROBE), {"role": "assistant", "content": _SENTINEL}], tokenize=False
            )
        except Exception as e:  # jinja errors, templates that raise_exception(...)
            raise ChatTemplateError(f"{source}: the chat template cannot render a user turn ({e})") from e
        if _PROBE not in prompt:
            raise ChatTemplateError(f"{source}: the chat template drops the user turn's text")
        if _SENTINEL not in full:
            raise ChatTemplateError(f"{source}: the chat template drops the assistant reply")
        after = full[full.index(_SENTINEL) + len(_SENTINEL) :]
        # The turn ends at its first special token: a template may close the whole conversation
        # after it ("<|end|>\n<|endoftext|>" in Phi-3.5's), which is not part of the reply.
        found = [(after.find(t), t) for t in special_tokens(self.tokenizer) if t in after]
        end = after[: min(found)[0] + len(min(found)[1])] if found else after.rstrip()
        if not end.strip():
            eos = self.tokenizer.eos_token
            if not eos:
                raise ChatTemplateError(f"{source}: the chat template ends a reply with nothing and there is no EOS")
            end = eos
        return end
