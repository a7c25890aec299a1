import pytest
import torch

from gandeploy.augment import augment, cutout, parse_policy, translation


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_translation_moves_every_image_whole_by_up_to_an_eighth_of_its_size():
    x = -torch.ones(4000, 1, 28, 28)
    x[:, 0, 14, 10] = 1.0  # one lit pixel away from the border
    out = translation(x, _gen())
    lit = (out[:, 0] == 1.0).nonzero()  # (image, row, col) of each lit pixel
    assert lit.shape[0] == x.shape[0]  # nothing lost or duplicated
    shifts = {(int(r) - 14, int(c) - 10) for _, r, c in lit}
    assert shifts == {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)}  # 28 * 0.125 -> 4 pixels, all drawn
    assert torch.equal(out[(out != 1.0)], -torch.ones(int((out != 1.0).sum())))  # the border is the background


def test_translation_pads_by_extending_the_edge():
    x = torch.arange(8.0).view(1, 1, 1, 8).expand(512, 1, 8, 8).contiguous()  # columns 0..7, in every row
    out = translation(x, _gen())
    shifted = {dx: torch.arange(8.0).add(dx).clamp(0, 7).expand(8, 8) for dx in (-1, 0, 1)}  # 8 * 0.125 -> 1
    seen = set()
    for img in out[:, 0]:
        match = [dx for dx, want in shifted.items() if torch.equal(img, want)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {-1, 0, 1}


def test_cutout_blanks_one_square_of_half_the_size_clipped_at_the_edges():
    x = torch.ones(3000, 1, 28, 28)
    out = cutout(x, _gen())
    areas = []
    for img in out[:, 0]:
        hole = img == 0
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert len(rows) and len(cols)
        assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1))  # one contiguous block ...
        assert hole[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # ... entirely blank
        assert int(hole.sum()) == len(rows) * len(cols)
        areas.append(int(hole.sum()))
    assert max(areas) == 14 * 14 and min(areas) == 7 * 7  # whole inside; centred on a corner
    assert torch.equal(out[out != 0], torch.ones(int((out != 0).sum())))


def test_augmentation_is_differentiable_and_repeatable():
    x = torch.randn(16, 3, 32, 32, requires_grad=True)
    names = parse_policy("color, translation,cutout")
    a = augment(x, names, _gen(3))
    assert torch.equal(a, augment(x, names, _gen(3))) and not torch.equal(a, augment(x, names, _gen(4)))
    (grad,) = torch.autograd.grad(a.square().sum(), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    masked = cutout(x, _gen(5))
    (grad,) = torch.autograd.grad(masked.sum(), x)
    assert torch.equal(grad, (masked != 0).to(grad.dtype))  # gradient 1 where the image shows, 0 in the hole


def test_unknown_augmentation_is_named():
    assert parse_policy("") == [] and parse_policy("translation") == ["translation"]
    with pytest.raises(ValueError, match="unknown augmentation 'flip'; valid: translation, cutout, color"):
        parse_policy("translation,flip")
