"""The exported graph's warp as one GPU kernel (Triton), for the torch backend on CUDA.

`LensGraph` ends in the chosen mode's fused backward grid and one ``grid_sample``; in eager
torch (and its CUDA-graph replay) that is ~40 full-resolution passes: the grid's polynomial
term by term, the residual's upsampling, the float copy of the photo, the sampling, the
rounding, and a transpose for the JPEG encoder. On an H200 the backend took 0.70 ms per
2048 x 1367 photo with them, 0.24 ms with this kernel (`tools/gpu_stages.py`'s ``model``;
the photo's JPEG encode takes ~0.8-1.0 ms). The kernel computes the same fused grid per
output pixel (parametric lens, plus the residual flow upsampled bilinearly with
``align_corners=True``) and samples the uint8 photo bilinearly (zeros outside, as
``grid_sample``), in ``(B, H, W, 3)`` layout in and out: one pass reading the photo and
writing the result, nothing else materialised. The arithmetic follows the graph's operation
by operation in float32; the compiler's multiply-add contractions differ from eager torch's,
so a pixel may land on the other side of a rounding: at most one grey level
(`tests/test_fused_warp.py`; in Triton's interpreter, without contractions, it is the
graph's to the bit).

Triton because it is the kernel language torch's own CUDA wheels depend on (no compiler or
build step for users) and it has an interpreter that runs the same kernel on a CPU, where CI
checks it against the graph.
"""
from __future__ import annotations

import numpy as np

try:
    import triton
    import triton.language as tl
except ImportError:  # the caller keeps the eager graph and says why
    triton = None

BLOCK = 512


def unavailable() -> str | None:
    """Why the fused warp cannot run here (None: it can)."""
    if triton is None:
        return "Triton is not installed (it comes with torch's CUDA wheels)"
    return None


if triton is not None:

    @triton.jit
    def _warp_kernel(src, dst, coef, flow, height, width, flow_h, flow_w, gx_scale, gy_scale, fx_scale, fy_scale,
                     BLOCK: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < height * width
        row = offs // width
        col = offs - row * width
        u = col.to(tl.float32)
        v = row.to(tl.float32)
        c = coef + b * 12
        k1 = tl.load(c + 0)
        k2 = tl.load(c + 1)
        k3 = tl.load(c + 2)
        p1 = tl.load(c + 3)
        p2 = tl.load(c + 4)
        f = tl.load(c + 5)
        cx = tl.load(c + 6)
        cy = tl.load(c + 7)
        nfx = tl.load(c + 8)
        nfy = tl.load(c + 9)
        ncx = tl.load(c + 10)
        ncy = tl.load(c + 11)
        # `parametric_points`: output pixel -> ideal ray -> distorted (`distort`) -> input pixel
        x = (u - ncx) / nfx
        y = (v - ncy) / nfy
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        gx = (f * xd + cx) * gx_scale - 1.0
        gy = (f * yd + cy) * gy_scale - 1.0
        # `fuse_residual`: the normalised flow, upsampled as `F.interpolate(..., "bilinear",
        # align_corners=True)` computes it
        sx = u * fx_scale
        sy = v * fy_scale
        x0 = sx.to(tl.int32)
        y0 = sy.to(tl.int32)
        x1 = tl.minimum(x0 + 1, flow_w - 1)
        y1 = tl.minimum(y0 + 1, flow_h - 1)
        lx1 = sx - x0.to(tl.float32)
        ly1 = sy - y0.to(tl.float32)
        lx0 = 1.0 - lx1
        ly0 = 1.0 - ly1
        plane = flow_h * flow_w
        fb = flow + b * 2 * plane
        for ch in tl.static_range(2):
            fc = fb + ch * plane
            f00 = tl.load(fc + y0 * flow_w + x0, mask=inside, other=0.0)
            f01 = tl.load(fc + y0 * flow_w + x1, mask=inside, other=0.0)
            f10 = tl.load(fc + y1 * flow_w + x0, mask=inside, other=0.0)
            f11 = tl.load(fc + y1 * flow_w + x1, mask=inside, other=0.0)
            delta = ly0 * (lx0 * f00 + lx1 * f01) + ly1 * (lx0 * f10 + lx1 * f11)
            if ch == 0:
                gx = gx + delta
            else:
                gy = gy + delta
        # `grid_sample(bilinear, zeros, align_corners=True)`, then `to_uint8`
        ix = ((gx + 1) / 2) * (width - 1)
        iy = ((gy + 1) / 2) * (height - 1)
        fx0 = tl.floor(ix)
        fy0 = tl.floor(iy)
        w_nw = (fx0 + 1 - ix) * (fy0 + 1 - iy)
        w_ne = (ix - fx0) * (fy0 + 1 - iy)
        w_sw = (fx0 + 1 - ix) * (iy - fy0)
        w_se = (ix - fx0) * (iy - fy0)
        # coordinates far outside (a wild lens) are clamped before the integer conversion;
        # every neighbour of such a point is outside the photo and masked
        ix0 = tl.minimum(tl.maximum(fx0, -2.0), width + 1.0).to(tl.int32)
        iy0 = tl.minimum(tl.maximum(fy0, -2.0), height + 1.0).to(tl.int32)
        ix1 = ix0 + 1
        iy1 = iy0 + 1
        in_x0 = (ix0 >= 0) & (ix0 < width)
        in_x1 = (ix1 >= 0) & (ix1 < width)
        in_y0 = (iy0 >= 0) & (iy0 < height)
        in_y1 = (iy1 >= 0) & (iy1 < height)
        image = src + b * height * width * 3
        out = dst + b * height * width * 3 + offs * 3
        for ch in tl.static_range(3):
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            acc += tl.load(image + (iy0 * width + ix0) * 3 + ch, mask=inside & in_y0 & in_x0, other=0).to(tl.float32) * w_nw
            acc += tl.load(image + (iy0 * width + ix1) * 3 + ch, mask=inside & in_y0 & in_x1, other=0).to(tl.float32) * w_ne
            acc += tl.load(image + (iy1 * width + ix0) * 3 + ch, mask=inside & in_y1 & in_x0, other=0).to(tl.float32) * w_sw
            acc += tl.load(image + (iy1 * width + ix1) * 3 + ch, mask=inside & in_y1 & in_x1, other=0).to(tl.float32) * w_se
            value = tl.minimum(tl.maximum(tl.floor(acc + 0.5), 0.0), 255.0)
            tl.store(out + ch, value.to(tl.uint8), mask=inside)


def warp_coefficients(params, camera, height: int, width: int):
    """``(B, 12)`` float32 per photo for the kernel: ``k1 k2 k3 p1 p2``, the input camera's
    ``f cx cy`` in pixels (`intrinsics_px`) and the output camera's ``fx fy cx cy``."""
    import torch

    from lens.geometry.camera import intrinsics_px

    return torch.cat([params[:, :5], intrinsics_px(params, height, width), camera], dim=1).to(torch.float32).contiguous()


def fused_warp(images, coefficients, flow):
    """``images`` ``(B, H, W, 3)`` uint8 (CUDA, or CPU under ``TRITON_INTERPRET=1``),
    ``coefficients`` from `warp_coefficients`, ``flow`` ``(B, 2, h, w)`` the chosen mode's
    residual in normalised units (`residual_to_normalized`; zeros for a parametric mode) ->
    the corrected ``(B, H, W, 3)`` uint8 photos, as `LensGraph` computes them to one grey
    level."""
    import torch

    if triton is None:
        raise RuntimeError(unavailable())
    batch, height, width, channels = images.shape
    if channels != 3 or images.dtype != torch.uint8:
        raise ValueError(f"fused_warp takes (B, H, W, 3) uint8 photos, not {tuple(images.shape)} {images.dtype}")
    if height * width * 3 >= 2**31:
        raise ValueError(f"fused_warp: a {width} x {height} photo is beyond its 32-bit pixel offsets")
    images = images.contiguous()
    flow = flow.to(torch.float32).contiguous()
    flow_h, flow_w = flow.shape[-2], flow.shape[-1]
    out = torch.empty_like(images)
    # the scalars as the graph's float32 operations round them: `pixel_to_normalized`'s
    # 2 / (size - 1) and `F.interpolate`'s (in - 1) / (out - 1)
    gx_scale, gy_scale = 2.0 / (width - 1), 2.0 / (height - 1)
    fx_scale = float(np.float32(flow_w - 1) / np.float32(width - 1))
    fy_scale = float(np.float32(flow_h - 1) / np.float32(height - 1))
    grid = (triton.cdiv(height * width, BLOCK), batch)
    _warp_kernel[grid](images, out, coefficients.contiguous(), flow, height, width, flow_h, flow_w, gx_scale, gy_scale, fx_scale, fy_scale, BLOCK=BLOCK)
    return out
