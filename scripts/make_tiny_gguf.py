#!/usr/bin/env python3
"""Write tiny random-weight GGUF models that a real ``ollama`` can load on a CPU.

    scripts/make_tiny_gguf.py OUT.gguf                 # llama architecture, ~200 KB
    scripts/make_tiny_gguf.py --embed OUT-embed.gguf   # bert architecture with mean pooling

The weights are random (seeded, so the files are byte-for-byte reproducible): the
models produce gibberish, but they exercise Ollama's real load / generate / unload
/ embed paths in well under a second. ``tests/services/real_ollama.py`` imports
:func:`write_tiny_llama` and :func:`write_tiny_bert` directly.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, PoolingType, TokenType

# A small word list so that English prompts do not tokenise byte by byte only.
_WORDS = " ".join(
    (
        "the a an and or of to in on for with is are was be it this that you I we they",
        "he she hello hi world why sky blue red green yes no what how when where who",
        "can will do not one two three four five time day good bad model load run",
        "text token test answer question please thanks ok",
    )
).split()


@dataclass(frozen=True)
class TinyShape:
    """Hyper-parameters of the tiny models (defaults: 2 layers, width 64, 4/2 heads)."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    context_length: int = 2048


def _spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style ("llama") vocabulary: specials, 256 byte tokens, pieces."""
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces: list[str] = ["▁"]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += [str(d) for d in range(10)]
    pieces += list(".,!?'-:;()")
    pieces += [f"▁{w}" for w in _WORDS]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(TokenType.NORMAL)
    # Specials and bytes score 0; pieces: longer ones score higher (preferred merges).
    scores = [0.0] * (3 + 256) + [
        -1000.0 + 10.0 * len(t) - i * 0.001 for i, t in enumerate(tokens[3 + 256 :])
    ]
    return tokens, scores, [int(t) for t in types]


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.02).astype(np.float32)


def write_tiny_llama(path: str | Path, *, shape: TinyShape | None = None, seed: int = 0) -> Path:
    """Write a tiny llama-architecture GGUF (F32, SentencePiece tokenizer) to ``path``."""
    s = shape or TinyShape()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = _spm_vocab()
    n_vocab = len(tokens)
    head_dim = s.n_embd // s.n_head
    rng = np.random.default_rng(seed)

    w = GGUFWriter(str(out), "llama")
    w.add_name("alb-tiny-llama")
    w.add_file_type(LlamaFileType.ALL_F32)
    w.add_context_length(s.context_length)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    # numpy shapes are (rows, cols) = ggml's ne reversed: a (out, in) matrix.
    w.add_tensor("token_embd.weight", _rand(rng, n_vocab, s.n_embd))
    for i in range(s.n_layer):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(s.n_embd, dtype=np.float32))
        w.add_tensor(f"{p}.attn_q.weight", _rand(rng, s.n_head * head_dim, s.n_embd))
        w.add_tensor(f"{p}.attn_k.weight", _rand(rng, s.n_head_kv * head_dim, s.n_embd))
        w.add_tensor(f"{p}.attn_v.weight", _rand(rng, s.n_head_kv * head_dim, s.n_embd))
        w.add_tensor(f"{p}.attn_output.weight", _rand(rng, s.n_embd, s.n_head * head_dim))
        w.add_tensor(f"{p}.ffn_norm.weight", np.ones(s.n_embd, dtype=np.float32))
        w.add_tensor(f"{p}.ffn_gate.weight", _rand(rng, s.n_ff, s.n_embd))
        w.add_tensor(f"{p}.ffn_up.weight", _rand(rng, s.n_ff, s.n_embd))
        w.add_tensor(f"{p}.ffn_down.weight", _rand(rng, s.n_embd, s.n_ff))
    w.add_tensor("output_norm.weight", np.ones(s.n_embd, dtype=np.float32))
    w.add_tensor("output.weight", _rand(rng, n_vocab, s.n_embd))
    _finish(w)
    return out


def _wordpiece_vocab() -> list[str]:
    """A BERT WordPiece vocabulary: specials, characters, ``##`` suffixes, words."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [str(d) for d in range(10)] + list(".,!?'-:;()")
    tokens += chars
    tokens += [f"##{c}" for c in chars if c.isalnum()]
    tokens += [w.lower() for w in _WORDS if w.lower() not in tokens]
    return list(dict.fromkeys(tokens))


def write_tiny_bert(path: str | Path, *, shape: TinyShape | None = None, seed: int = 1) -> Path:
    """Write a tiny bert-architecture embedding GGUF (F32, WordPiece, mean pooling)."""
    s = shape or TinyShape(n_head_kv=4, context_length=512)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens = _wordpiece_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    w = GGUFWriter(str(out), "bert")
    w.add_name("alb-tiny-bert")
    w.add_file_type(LlamaFileType.ALL_F32)
    w.add_context_length(s.context_length)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(PoolingType.MEAN)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL] * 5 + [TokenType.NORMAL] * (n_vocab - 5))
    w.add_pad_token_id(0)
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)  # [CLS]
    w.add_sep_token_id(3)
    w.add_eos_token_id(3)  # [SEP]
    w.add_mask_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    ones = np.ones(s.n_embd, dtype=np.float32)
    zeros = np.zeros(s.n_embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", _rand(rng, n_vocab, s.n_embd))
    w.add_tensor("token_types.weight", _rand(rng, 2, s.n_embd))
    w.add_tensor("position_embd.weight", _rand(rng, s.context_length, s.n_embd))
    w.add_tensor("token_embd_norm.weight", ones)
    w.add_tensor("token_embd_norm.bias", zeros)
    for i in range(s.n_layer):
        p = f"blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"{p}.{name}.weight", _rand(rng, s.n_embd, s.n_embd))
            w.add_tensor(f"{p}.{name}.bias", zeros)
        w.add_tensor(f"{p}.attn_output_norm.weight", ones)
        w.add_tensor(f"{p}.attn_output_norm.bias", zeros)
        w.add_tensor(f"{p}.ffn_up.weight", _rand(rng, s.n_ff, s.n_embd))
        w.add_tensor(f"{p}.ffn_up.bias", np.zeros(s.n_ff, dtype=np.float32))
        w.add_tensor(f"{p}.ffn_down.weight", _rand(rng, s.n_embd, s.n_ff))
        w.add_tensor(f"{p}.ffn_down.bias", zeros)
        w.add_tensor(f"{p}.layer_output_norm.weight", ones)
        w.add_tensor(f"{p}.layer_output_norm.bias", zeros)
    _finish(w)
    return out


def _finish(w: GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the .gguf file")
    parser.add_argument(
        "--embed", action="store_true", help="write the bert embedding model instead"
    )
    parser.add_argument("--seed", type=int, default=None, help="RNG seed for the weights")
    args = parser.parse_args(argv)
    if args.embed:
        path = write_tiny_bert(args.out, seed=1 if args.seed is None else args.seed)
    else:
        path = write_tiny_llama(args.out, seed=0 if args.seed is None else args.seed)
    print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
