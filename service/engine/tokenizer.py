"""Prompt token ids exactly as the reference computes them.

The reference (tipo-kgen, transformers backend) tokenises with the *slow* transformers-4
`LlamaTokenizer`: SentencePiece plus the tokenizer's added tokens. transformers 5 dropped that class
(its `LlamaTokenizer` is a Rust BPE converted from the SentencePiece model), and vLLM would
tokenise text with whatever the installed transformers gives. So we compute the ids ourselves with
`sentencepiece`, following the slow tokenizer's rules, and hand vLLM `prompt_token_ids`:

1. The text is split on the added tokens (TIPO's 13 `<|...|>` tokens and `<unk>`, `<s>`, `</s>`),
   leftmost match first, longest alternative first. The template's markers become single tokens.
2. Each piece of plain text between them is encoded with SentencePiece. Two modes, chosen by the
   model's `tokenizer_config.json` key `legacy` (absent = True, the transformers-4 default):
   * legacy=False: only the very start of the text gets SentencePiece's "▁" prefix; text right
     after an added token gets none (`<|short|>short` -> [32002, "short"]);
   * legacy=True: every piece gets the "▁" prefix (`<|short|>short` -> [32002, "▁short"]), which is
     also what llama.cpp (the reference's GGUF backend) does.
3. BOS (id 1) first when `add_bos_token` (default True); EOS last only when `add_eos_token`.

tests/engine/test_tokenizer.py checks these ids against ids recorded from transformers 4.57's slow
tokenizer and against transformers 5's tokenizer (the one vLLM loads for detokenisation).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

log = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"


@dataclass(frozen=True)
class AddedToken:
    text: str
    id: int
    special: bool = False  # <s>, </s>, <unk>; TIPO's <|...|> tokens are not special
    lstrip: bool = False  # eat the whitespace left of the token
    rstrip: bool = False  # eat the whitespace right of the token


@dataclass(frozen=True)
class Marker:
    """An added token placed by the template itself (see `encode_parts`)."""

    text: str


class PromptTokenizer:
    """Text -> the token ids the model sees (BOS included). Thread-safe after construction."""

    def __init__(
        self,
        sentencepiece_model: Path,
        added_tokens: Sequence[AddedToken],
        *,
        legacy: bool = True,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        add_prefix_space: bool = True,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
    ) -> None:
        self.legacy = legacy
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.add_prefix_space = add_prefix_space
        self._sp = _load_sentencepiece(Path(sentencepiece_model), add_dummy_prefix=legacy)
        self.added_tokens = {token.text: token for token in added_tokens}
        for text in (bos_token, eos_token, unk_token):  # the slow tokenizer always splits on these
            if text not in self.added_tokens:
                self.added_tokens[text] = AddedToken(text, self._sp.piece_to_id(text), special=True)
        self.bos_id = self.added_tokens[bos_token].id
        self.eos_id = self.added_tokens[eos_token].id
        self._unk_token = unk_token
        # How many ids "<unk>" encodes to as plain text: the prefix trick in `_encode_plain` drops them.
        self._unk_prefix_len = len(self._sp.encode(unk_token))
        longest_first = sorted(self.added_tokens, key=len, reverse=True)
        self._added_pattern = re.compile("|".join(re.escape(text) for text in longest_first))

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> PromptTokenizer:
        """Read tokenizer.model, tokenizer_config.json, added_tokens.json, special_tokens_map.json."""
        model_dir = Path(model_dir)
        sp_path = model_dir / "tokenizer.model"
        if not sp_path.is_file():
            raise FileNotFoundError(f"{sp_path} not found: the TIPO tokenizer is a SentencePiece tokenizer.model")
        config = _read_json(model_dir / "tokenizer_config.json")
        special_map = _read_json(model_dir / "special_tokens_map.json")

        tokens: dict[str, AddedToken] = {}
        for text, token_id in _read_json(model_dir / "added_tokens.json").items():
            tokens[text] = AddedToken(text, int(token_id))
        for token_id, entry in config.get("added_tokens_decoder", {}).items():
            tokens[entry["content"]] = AddedToken(
                entry["content"],
                int(token_id),
                special=bool(entry.get("special", False)),
                lstrip=bool(entry.get("lstrip", False)),
                rstrip=bool(entry.get("rstrip", False)),
            )
            if entry.get("single_word"):
                raise ValueError(f"{model_dir}: single_word added token {entry['content']!r} is not supported")

        if "legacy" not in config:
            log.warning("%s: tokenizer_config.json has no 'legacy' key; using the slow LlamaTokenizer's "
                        "default legacy=True (a '▁' is prepended to text after an added token)", model_dir)

        def special(name: str, default: str) -> str:
            value = config.get(name) or special_map.get(name) or default
            return value["content"] if isinstance(value, dict) else value

        return cls(
            sp_path,
            list(tokens.values()),
            legacy=bool(config.get("legacy", True)),
            add_bos_token=bool(config.get("add_bos_token", True)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            add_prefix_space=config.get("add_prefix_space") is not False,
            bos_token=special("bos_token", "<s>"),
            eos_token=special("eos_token", "</s>"),
            unk_token=special("unk_token", "<unk>"),
        )

    @property
    def vocab_size(self) -> int:
        return max(self._sp.get_piece_size(), max(token.id for token in self.added_tokens.values()) + 1)

    def encode_template(self, text: str) -> list[int]:
        """Token ids of `text` with every added-token string in it parsed as that token (the reference)."""
        return self.encode_parts([text])

    def encode_parts(self, parts: Iterable[str | Marker], parse_added_in_text: bool = True) -> list[int]:
        """Token ids of the concatenation of `parts`.

        A `Marker` is always its added token. With `parse_added_in_text=False` the strings are kept
        literal: a `<|long|>` typed by a user is encoded as the characters it is made of. Text pieces
        that meet without a Marker between them are joined before encoding, so splitting a string
        differently never changes its ids.
        """
        chunks: list[str | AddedToken] = []  # plain text and added tokens, in order
        text_run: list[str] = []

        def flush_text() -> None:
            if text_run:
                joined = "".join(text_run)
                text_run.clear()
                chunks.extend(self._split_added(joined) if parse_added_in_text else [joined])

        for part in parts:
            if isinstance(part, Marker):
                flush_text()
                chunks.append(self.added_tokens[part.text])
            else:
                text_run.append(part)
        flush_text()
        return self._encode_chunks(chunks)

    def encode_segments(self, segments: Iterable[tuple[str, bool]]) -> list[int]:
        """Token ids of a prompt given as (text, is_template) parts (engine.base.Segments).

        Added-token strings in template parts become their tokens; user parts stay literal text.
        For a prompt whose user parts contain no added-token string this equals `encode_template`.
        """
        parts: list[str | Marker] = []
        for text, is_template in segments:
            if not is_template:
                parts.append(text)
                continue
            for chunk in self._split_added(text):
                parts.append(Marker(chunk.text) if isinstance(chunk, AddedToken) else chunk)
        return self.encode_parts(parts, parse_added_in_text=False)

    def count_tokens(self, text: str) -> int:
        return len(self.encode_template(text))

    # --- the slow LlamaTokenizer's rules

    def _split_added(self, text: str) -> list[str | AddedToken]:
        chunks: list[str | AddedToken] = []
        position = 0
        for match in self._added_pattern.finditer(text):
            chunks.append(text[position : match.start()])
            chunks.append(self.added_tokens[match.group()])
            position = match.end()
        chunks.append(text[position:])
        return chunks

    def _encode_chunks(self, chunks: list[str | AddedToken]) -> list[int]:
        # legacy=False: the whole text (not each chunk) gets one leading "▁"; a literal "▁" is a space.
        text_is_empty = all(chunk == "" for chunk in chunks)
        if not self.legacy and not text_is_empty:
            chunks = [c.replace(SPIECE_UNDERLINE, " ") if isinstance(c, str) else c for c in chunks]
            if self.add_prefix_space:
                if isinstance(chunks[0], str):
                    chunks[0] = SPIECE_UNDERLINE + chunks[0]
                else:
                    chunks.insert(0, SPIECE_UNDERLINE)

        # Added tokens with lstrip/rstrip eat the whitespace next to them.
        for index, chunk in enumerate(chunks):
            if isinstance(chunk, AddedToken):
                if chunk.lstrip and index > 0 and isinstance(chunks[index - 1], str):
                    chunks[index - 1] = chunks[index - 1].rstrip()
                if chunk.rstrip and index + 1 < len(chunks) and isinstance(chunks[index + 1], str):
                    chunks[index + 1] = chunks[index + 1].lstrip()

        ids: list[int] = []
        for chunk in chunks:
            if isinstance(chunk, AddedToken):
                ids.append(chunk.id)
            elif chunk:
                ids.extend(self._encode_plain(chunk))

        # legacy=False: a lone leading "▁" before a *special* token is dropped (not before <|...|>).
        if not self.legacy and len(chunks) > 1 and chunks[0] == SPIECE_UNDERLINE:
            second = chunks[1]
            if isinstance(second, AddedToken) and second.special:
                ids = ids[1:]

        if self.add_bos_token:
            ids.insert(0, self.bos_id)
        if self.add_eos_token:
            ids.append(self.eos_id)
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp.encode(text)
        # Without the dummy prefix SentencePiece would drop a leading "▁"; encoding "<unk>" + text
        # and cutting the "<unk>" ids off keeps it, and keeps "▁word" merged as one piece.
        return self._sp.encode(self._unk_token + text)[self._unk_prefix_len :]


def _load_sentencepiece(path: Path, add_dummy_prefix: bool) -> sentencepiece.SentencePieceProcessor:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    proto.normalizer_spec.add_dummy_prefix = add_dummy_prefix
    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
