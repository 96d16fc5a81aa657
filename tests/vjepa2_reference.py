"""A plain, functional restatement of the official V-JEPA 2 forward passes, written from the
published algorithm (facebookresearch/vjepa2, src/models): RoPE rebuilt in every layer and
applied per (time, height, width) section, masks applied by gather + cat, the predictor's
per-sample sort. It works on a state dict, so it shares no code with stjepa.models and serves
as the independent reference in tests."""
import torch
import torch.nn.functional as F


def rotate_queries_or_keys(x, pos):
    # as upstream, including the 'repeat' frequency layout kept for checkpoint compatibility
    B, num_heads, N, D = x.size()
    omega = torch.arange(D // 2, dtype=x.dtype, device=x.device)
    omega /= D / 2.0
    omega = 1.0 / 10000**omega
    freq = torch.einsum("..., f -> ... f", pos, omega)
    emb_sin = freq.sin()
    emb_cos = freq.cos()
    emb_sin = emb_sin.squeeze(-1).repeat(1, 1, 1, 2)
    emb_cos = emb_cos.squeeze(-1).repeat(1, 1, 1, 2)
    y = x.unflatten(-1, (-1, 2))
    y1, y2 = y.unbind(dim=-1)
    y = torch.stack((-y2, y1), dim=-1).flatten(-2)
    return (x * emb_cos) + (y * emb_sin)


def separate_positions(ids, H_patches, W_patches):
    tokens_per_frame = H_patches * W_patches
    frame_ids = ids // tokens_per_frame
    rest = ids - tokens_per_frame * frame_ids
    height_ids = rest // W_patches
    width_ids = rest - W_patches * height_ids
    return frame_ids, height_ids, width_ids


def rope_attention(sd, prefix, x, num_heads, ids, H_patches, W_patches):
    B, N, C = x.shape
    qkv = F.linear(x, sd[prefix + "qkv.weight"], sd[prefix + "qkv.bias"])
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    head_dim = C // num_heads
    d_dim = int(2 * ((head_dim // 3) // 2))
    mask = ids.unsqueeze(1).repeat(1, num_heads, 1)
    d, h, w = (p.to(x.dtype) for p in separate_positions(mask, H_patches, W_patches))
    s = 0
    parts_q, parts_k = [], []
    for pos in (d, h, w):
        parts_q.append(rotate_queries_or_keys(q[..., s : s + d_dim], pos))
        parts_k.append(rotate_queries_or_keys(k[..., s : s + d_dim], pos))
        s += d_dim
    if s < head_dim:
        parts_q.append(q[..., s:])
        parts_k.append(k[..., s:])
    q, k = torch.cat(parts_q, -1), torch.cat(parts_k, -1)
    attn = (q @ k.transpose(-2, -1)) * head_dim**-0.5
    out = attn.softmax(-1) @ v
    out = out.transpose(1, 2).reshape(B, N, C)
    return F.linear(out, sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])


def block(sd, prefix, x, num_heads, ids, H_patches, W_patches, eps=1e-6):
    C = x.shape[-1]
    y = F.layer_norm(x, (C,), sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"], eps)
    x = x + rope_attention(sd, prefix + "attn.", y, num_heads, ids, H_patches, W_patches)
    y = F.layer_norm(x, (C,), sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"], eps)
    y = F.linear(y, sd[prefix + "mlp.fc1.weight"], sd[prefix + "mlp.fc1.bias"])
    y = F.linear(F.gelu(y), sd[prefix + "mlp.fc2.weight"], sd[prefix + "mlp.fc2.bias"])
    return x + y


def apply_masks(x, masks):
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).repeat(1, 1, x.size(-1))) for m in masks], 0)


def encoder_forward(sd, x, num_heads, patch_size=16, tubelet_size=2, masks=None):
    _, _, T, H, W = x.shape
    Hp, Wp = H // patch_size, W // patch_size
    x = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(tubelet_size, patch_size, patch_size))
    x = x.flatten(2).transpose(1, 2)
    B, N, C = x.shape
    if masks is not None:
        x = apply_masks(x, masks)
        ids = torch.cat(masks, 0)
    else:
        ids = torch.arange(N).expand(B, N)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        x = block(sd, f"blocks.{i}.", x, num_heads, ids, Hp, Wp)
    return F.layer_norm(x, (C,), sd["norm.weight"], sd["norm.bias"], 1e-6)


def predictor_forward(sd, x, masks_x, masks_y, num_heads, grid, mask_index=0):
    _, Hp, Wp = grid
    x = F.linear(x, sd["predictor_embed.weight"], sd["predictor_embed.bias"])
    B, N_ctxt, D = x.shape
    num_tokens = sum(1 for k in sd if k.startswith("mask_tokens."))
    token = sd[f"mask_tokens.{mask_index % num_tokens}"]
    pred_tokens = token.repeat(B, grid[0] * Hp * Wp, 1)
    pred_tokens = apply_masks(pred_tokens, [masks_y])
    x = torch.cat([x, pred_tokens], dim=1)
    masks = torch.cat([masks_x, masks_y], dim=1)
    argsort = torch.argsort(masks, dim=1)
    masks = torch.stack([masks[i, row] for i, row in enumerate(argsort)], dim=0)
    x = torch.stack([x[i, row, :] for i, row in enumerate(argsort)], dim=0)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("predictor_blocks."))
    for i in range(depth):
        x = block(sd, f"predictor_blocks.{i}.", x, num_heads, masks, Hp, Wp)
    x = F.layer_norm(x, (D,), sd["predictor_norm.weight"], sd["predictor_norm.bias"], 1e-6)
    reverse = torch.argsort(argsort, dim=1)
    x = torch.stack([x[i, row, :] for i, row in enumerate(reverse)], dim=0)[:, N_ctxt:]
    return F.linear(x, sd["predictor_proj.weight"], sd["predictor_proj.bias"])


def jepa_loss(pred, target, loss_exp=1.0):
    return torch.mean(torch.abs(pred - target) ** loss_exp) / loss_exp

