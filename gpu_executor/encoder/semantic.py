"""wav2vec2-bert up to its 16th layer for a padded batch, with an attention mask and lean position bias.

The package runs all 24 layers on an unmasked batch and keeps ``hidden_states[16]``. This runs the same layer
modules (their own feed-forward, convolution and norm submodules) for 16 layers only, with:
- an attention mask, so padded frames never reach a clip's frames (the conformer convolution is causal and is
  given the mask, as transformers does when a mask is passed);
- the ``relative_key`` position bias computed as ``q @ E^T`` over the 73 distance embeddings and then gathered per
  (query, key) pair, instead of materializing a ``[T, T, 64]`` embedding tensor (549 MiB at 30 s);
- queries processed in blocks for long inputs, so the ``[heads, T, T]`` score tensor never exists at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SemanticStack"]


class SemanticStack(nn.Module):
    """Callable: features [B, S, 160] + frame counts -> hidden states of layer ``num_layers`` [B, S, 1024]."""

    def __init__(self, w2v_bert: nn.Module, num_layers: int = 16, query_block: int = 1024) -> None:
        super().__init__()
        config = w2v_bert.config
        if getattr(config, "position_embeddings_type", None) != "relative_key":
            raise ValueError(
                f"wav2vec2-bert position_embeddings_type {config.position_embeddings_type!r} is not supported: "
                "the engine implements the 'relative_key' bias of facebook/w2v-bert-2.0"
            )
        if len(w2v_bert.encoder.layers) < num_layers:
            raise ValueError(f"the semantic model has {len(w2v_bert.encoder.layers)} layers, {num_layers} needed")
        self.feature_projection = w2v_bert.feature_projection
        self.layers = nn.ModuleList(list(w2v_bert.encoder.layers[:num_layers]))
        self.left = int(config.left_max_position_embeddings)
        self.right = int(config.right_max_position_embeddings)
        self.query_block = query_block

    def _attention(self, attn: nn.Module, x: torch.Tensor, key_pad: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = attn.num_heads, attn.head_size
        q = attn.linear_q(x).view(b, t, h, d).transpose(1, 2)
        k = attn.linear_k(x).view(b, t, h, d).transpose(1, 2)
        v = attn.linear_v(x).view(b, t, h, d).transpose(1, 2)
        table = attn.distance_embedding.weight.to(q.dtype)  # [left + right + 1, d]
        keys = torch.arange(t, device=x.device)
        outs = []
        for start in range(0, t, self.query_block):
            stop = min(start + self.query_block, t)
            qb = q[:, :, start:stop]
            # bias[b, h, l, r] = scaling * q[l] . E[clamp(r - l) + left], as transformers' einsum computes it.
            per_distance = torch.matmul(qb, table.t())  # [B, H, Lq, 73]
            rel = keys[None, :] - torch.arange(start, stop, device=x.device)[:, None]
            index = (rel.clamp(-self.left, self.right) + self.left).expand(b, h, -1, -1)
            bias = per_distance.gather(-1, index) * attn.scaling
            if key_pad is not None:
                bias = bias.masked_fill(key_pad[:, None, None, :], torch.finfo(bias.dtype).min)
            outs.append(F.scaled_dot_product_attention(qb, k, v, attn_mask=bias, scale=attn.scaling))
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return attn.linear_out(out.transpose(1, 2).reshape(b, t, h * d))

    def _layer(self, layer: nn.Module, x: torch.Tensor, valid: torch.Tensor | None,
               key_pad: torch.Tensor | None) -> torch.Tensor:
        residual = x
        x = layer.ffn1(layer.ffn1_layer_norm(x)) * 0.5 + residual
        residual = x
        x = self._attention(layer.self_attn, layer.self_attn_layer_norm(x), key_pad) + residual
        residual = x
        x = residual + layer.conv_module(x, attention_mask=valid)
        residual = x
        x = layer.ffn2(layer.ffn2_layer_norm(x)) * 0.5 + residual
        return layer.final_layer_norm(x)

    def forward(self, features: torch.Tensor, frames: list[int]) -> torch.Tensor:
        if all(n == features.shape[1] for n in frames):
            return self._run(features, None)
        return self.forward_lengths(features, torch.tensor(frames, device=features.device))

    def forward_lengths(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Always masked, from frame counts already on the device: no host sync, so a CUDA graph can hold it."""
        return self._run(features, torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None])

    def _run(self, features: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        x, _ = self.feature_projection(features)
        key_pad = None
        if valid is not None:
            key_pad = ~valid
            x = x.masked_fill(key_pad.unsqueeze(-1), 0.0)
        for layer in self.layers:
            x = self._layer(layer, x, valid, key_pad)
        return x
