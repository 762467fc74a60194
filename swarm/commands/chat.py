"""`swarm chat MODEL`: a conversation through the swarm, one message per line of stdin.

Each reply streams to stdout (then a new line); the prompt marker, logs and progress go to
stderr. The conversation is one inference session: each turn renders the whole conversation
with the tokenizer's chat template and sends only what follows the tokens the session
already holds. Where the template renders them otherwise (a reply whose text encodes to
other tokens than were generated), the session rewinds to where they part and goes on from
there. `/reset` forgets the conversation but keeps the session, so that the next one goes on
from what they share (the system prompt); end of input (Ctrl-D) or `/exit` ends it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoints import resolve_checkpoint
from ..generation import common_prefix
from .generate import decode_text, drafting_options, open_model, sampling_options, write_stream

if TYPE_CHECKING:
    from ..model import DistributedModelForCausalLM, InferenceSession

logger = logging.getLogger(__name__)


class Conversation:
    """The messages so far, as the chat template takes them."""

    def __init__(self, system: str | None = None) -> None:
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt(self, tokenizer: Any) -> torch.Tensor:
        """The whole conversation's token ids, ready for the assistant's next message."""
        encoded = tokenizer.apply_chat_template(
            self.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return torch.as_tensor(encoded["input_ids"])


def shared_tokens(held: torch.Tensor | None, prompt: torch.Tensor) -> int:
    """How many of the tokens a session holds `prompt` begins with: all it holds, when it
    extends them, and never its own last token (one goes through, for the next logits)."""
    return 0 if held is None else min(common_prefix(held, prompt), prompt.shape[1] - 1)


class Chat:
    """One conversation at a time over one model, in one session."""

    def __init__(self, model: DistributedModelForCausalLM, args: argparse.Namespace) -> None:
        self.model = model
        self.max_length = args.max_length
        self.options = sampling_options(args) | drafting_options(args)
        self.conversation = Conversation(args.system)
        self.session: InferenceSession | None = None
        self._open = ExitStack()  # the session's

    def close(self) -> None:
        self._open.close()
        self.session = None

    def reset(self) -> None:
        """A new conversation, in the same session (rewound by the next reply)."""
        self.conversation.reset()

    def reply(self, tokenizer: Any, message: str) -> None:
        """Stream the answer to `message` to stdout."""
        self.conversation.messages.append({"role": "user", "content": message})
        prompt = self.conversation.prompt(tokenizer)
        if prompt.shape[1] + self.options["max_new_tokens"] > self.max_length:
            self.conversation.messages.pop()
            logger.error("the conversation would pass --max-length %d: /reset", self.max_length)
            return
        if self.session is None:
            self.session = self._open.enter_context(self.model.inference_session(self.max_length))
        held = self.session.input_ids
        shared = shared_tokens(held, prompt)
        if held is not None and shared < held.shape[1]:
            logger.info("the session holds %d tokens, the conversation shares %d of them: "
                        "going on from there", held.shape[1], shared)  # fmt: skip
            self.session.rewind(shared)
        stream = self.session.stream(prompt[:, shared:], tokenizer=tokenizer, **self.options)
        tokens = write_stream(tokenizer, stream)
        answer = decode_text(tokenizer, tokens)
        self.conversation.messages.append({"role": "assistant", "content": answer})


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    checkpoint = resolve_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with open_model(args, checkpoint) as model:
        chat = Chat(model, args)
        try:
            while True:
                sys.stderr.write("> ")
                sys.stderr.flush()
                line = sys.stdin.readline()
                message = line.strip()
                if not line or message == "/exit":
                    return 0
                if message == "/reset":
                    chat.reset()
                elif message:
                    chat.reply(tokenizer, message)
        finally:
            chat.close()
