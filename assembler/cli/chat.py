"""`assemble chat MODEL_DIR_OR_RUN [--image PATH]... [--prompt TEXT]`: ask a trained model (what it
loads and how it answers is `assembler.hf.chat`'s)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("chat")
@click.argument("model", metavar="MODEL_DIR_OR_RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image to ask about, placed before the (first) question; repeatable.")
@click.option("--prompt", default=None, help="Ask this one question, print the answer and exit (else: interactive on a "
              "terminal, or the whole of standard input as one question).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True, help="Longest answer, in tokens.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy decoding.")
@click.option("--thinking", is_flag=True, help="Let the model write a reasoning block before its answer (the chat "
              "template's enable_thinking); off, as assemble trains answers without reasoning.")
def chat_command(model: Path, images: tuple[Path, ...], prompt: str | None, max_new_tokens: int, temperature: float,
                 thinking: bool) -> None:
    """Chat with MODEL_DIR_OR_RUN (an HF export, a run folder or a training checkpoint: its latest
    checkpoint is exported first) through transformers' generate and the model's chat template."""
    from assembler.hf.chat import chat_model

    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, thinking=thinking)
    with chat_model(model, note=lambda line: click.echo(line, err=True)) as loaded:
        if prompt is None and not sys.stdin.isatty():
            prompt = sys.stdin.read().strip()
        if prompt is not None:
            click.echo(loaded.reply([_user_turn(prompt, images)], list(images), **settings))
            return
        click.echo(f"chatting with {loaded.folder} (an empty line or Ctrl-D ends)", err=True)
        messages: list[dict] = []
        while True:
            try:
                question = input("> ").strip()
            except EOFError:
                break
            if not question:
                break
            messages.append(_user_turn(question, () if len(messages) else images))
            answer = loaded.reply(messages, list(images), stream=lambda text: click.echo(text, nl=False), **settings)
            click.echo()
            messages.append({"role": "assistant", "content": answer})


def _user_turn(text: str, images) -> dict:  # noqa: ANN001 (paths)
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": text}]}
