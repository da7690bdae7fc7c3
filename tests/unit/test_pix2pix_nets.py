"""The pix2pix pair (models/pix2pix.py): shapes at every resolution, the output range, the
PatchGAN's map, dropout as G's noise, and gradients through both networks."""
from __future__ import annotations

import pytest
import torch

from models.pix2pix import PatchDiscriminator, UNetGenerator

RESOLUTIONS = (8, 16, 32, 64, 128, 256)   # powers of two from 8 up; 256 is the paper's
CHANNELS = ((1, 1), (1, 3), (3, 3))        # A -> B: grayscale, colourization, colour
SMALL = {"width": 8, "max_width": 32}      # the paper's widths cost seconds at 256 on a CPU


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_unet_output_is_the_target_shape_in_tanh_range(resolution):
    torch.manual_seed(0)
    for ca, cb in CHANNELS:
        G = UNetGenerator(ca, cb, resolution, **SMALL)
        b = G(torch.randn(2, ca, resolution, resolution) * 3)   # large inputs saturate the tanh
        assert b.shape == (2, cb, resolution, resolution)
        assert b.abs().max() <= 1 and (G.channels_a, G.channels, G.resolution) == (ca, cb, resolution)


# The 70x70 PatchGAN (3 layers) from 32 up, a map of R / 8 - 2 (the paper's 30x30 at 256);
# fewer layers below 32, where 3 would leave less than 2x2.
@pytest.mark.parametrize("resolution, side", [(8, 2), (16, 2), (32, 2), (64, 6), (128, 14), (256, 30)])
def test_patch_discriminator_gives_a_map_of_logits(resolution, side):
    for ca, cb in CHANNELS:
        D = PatchDiscriminator(ca, cb, resolution, **SMALL)
        out = D(torch.randn(2, ca, resolution, resolution), torch.randn(2, cb, resolution, resolution))
        assert out.shape == (2, 1, side, side)


def test_full_width_pair_has_the_papers_size():
    """Parameter counts of pix2pix's own unet_256 (batch norm) and basic 3-layer D, 3 -> 3 channels."""
    G, D = UNetGenerator(3, 3, 256), PatchDiscriminator(3, 3, 256)
    assert sum(p.numel() for p in G.parameters()) == 54_414_531
    assert sum(p.numel() for p in D.parameters()) == 2_768_705


def test_dropout_is_the_noise_in_train_mode_and_off_in_eval_mode():
    torch.manual_seed(0)
    G = UNetGenerator(1, 1, 32, **SMALL)
    a = torch.randn(4, 1, 32, 32)
    assert not torch.equal(G(a), G(a))
    G.eval()
    assert torch.equal(G(a), G(a))
    quiet = UNetGenerator(1, 1, 32, dropout=0, **SMALL)
    assert torch.equal(quiet(a), quiet(a))   # train mode without dropout: batch norm alone is deterministic


def test_gradients_reach_the_first_layer_of_both():
    torch.manual_seed(0)
    G, D = UNetGenerator(3, 3, 32, norm="instance", **SMALL), PatchDiscriminator(3, 3, 32, norm="batch", **SMALL)
    a = torch.randn(2, 3, 32, 32)
    D(a, G(a)).mean().backward()
    for first in (G.down[0], D.net[0]):
        assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="power of two >= 8, got 48"):
        UNetGenerator(1, 1, 48)
    with pytest.raises(ValueError, match="power of two >= 8, got 4"):
        PatchDiscriminator(1, 1, 4)
    with pytest.raises(ValueError, match="takes 1 to 2 layers"):   # a 1x1 map at 16
        PatchDiscriminator(1, 1, 16, layers=3)
    with pytest.raises(ValueError, match="norm must be one of batch, instance"):
        UNetGenerator(1, 1, 32, norm="layer")
