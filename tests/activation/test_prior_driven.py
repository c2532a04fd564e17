"""Prior-driven softmax (paper Eq. 2) and sigmoid (Eq. 3) as logit offsets."""
import pytest
import torch

from nnunet_stipple.activation.prior_driven import (
    prior_driven_sigmoid,
    prior_driven_softmax,
    region_probabilities,
    sigmoid_offset,
    softmax_offset,
)
from nnunet_stipple.priors.spatial_prior import combine_class_probabilities


def random_class_probs(gen, shape, floor=1e-3, dim=1):
    q = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.6
    return combine_class_probabilities(q.float(), floor, channel_dim=dim)


@pytest.mark.parametrize("shape, dim", [((2, 4, 3, 5, 6), 1), ((4, 7, 5), 0), ((3, 2, 6, 6), 1)])
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_uniform_prior_is_plain_softmax(shape, dim, scale):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g) * scale
    uniform = torch.full(shape, 1.0 / shape[dim])
    torch.testing.assert_close(prior_driven_softmax(logits, uniform, dim=dim), torch.softmax(logits, dim),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed, shape, dim", [(0, (2, 4, 3, 5, 6), 1), (1, (5, 6, 7), 0), (2, (1, 3, 4, 4), 1)])
def test_softmax_equals_eq2(seed, shape, dim):
    """softmax(s + ln p) == s_k p_k / sum_c s_c p_c with s = softmax(logits) (Eq. 2)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    p = random_class_probs(g, shape, dim=dim)
    got = prior_driven_softmax(logits.float(), p, dim=dim).double()
    s = torch.softmax(logits, dim)
    num = s * p.double()
    expected = num / num.sum(dim, keepdim=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(dim), torch.ones_like(got.sum(dim)), rtol=0, atol=1e-5)
    # the offset is ln p, added to the logits
    torch.testing.assert_close(softmax_offset(p), torch.log(p.float()))


def test_softmax_hand_example():
    # s = (0.5, 0.25, 0.25) from logits ln s; p = (0.2, 0.6, 0.2): s*p = (0.1, 0.15, 0.05) / 0.3
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    p = torch.tensor([[0.2, 0.6, 0.2]])
    got = prior_driven_softmax(logits, p, dim=1)
    torch.testing.assert_close(got, torch.tensor([[1 / 3, 0.5, 1 / 6]]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed, shape", [(0, (2, 3, 4, 5, 6)), (1, (1, 2, 8, 8)), (2, (3, 1, 5))])
def test_sigmoid_equals_eq3(seed, shape):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    p = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.98 + 0.01)
    got = prior_driven_sigmoid(logits.float(), p.float()).double()
    s = torch.sigmoid(logits)
    expected = s * p / (s * p + (1 - s) * (1 - p))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigmoid_offset(p.float()), torch.logit(p.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 5.0, 30.0])
def test_sigmoid_with_half_prior_is_plain_sigmoid(scale):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn((2, 3, 4, 4, 4), generator=g) * scale
    half = torch.full_like(logits, 0.5)
    torch.testing.assert_close(prior_driven_sigmoid(logits, half), torch.sigmoid(logits), rtol=0, atol=1e-7)
    assert torch.all(sigmoid_offset(half) == 0)


def test_outputs_are_float32_for_half_inputs():
    logits = torch.randn((1, 3, 4, 4)).half()
    p = torch.full((1, 3, 4, 4), 1 / 3).half()
    assert prior_driven_softmax(logits, p).dtype == torch.float32
    assert prior_driven_sigmoid(logits, torch.full_like(p, 0.3)).dtype == torch.float32


@pytest.mark.parametrize("regions, channel_dim", [
    ([1, 2, 3], 1),
    ([(1, 2, 3), (2, 3), 3], 1),          # nested regions (BraTS-style)
    ([(1, 2), (0, 3)], 1),
    ([(1, 2, 3), 2], 0),
])
@pytest.mark.parametrize("floor", [1e-3, 0.05])
def test_region_probabilities_sum_labels_and_clip(regions, channel_dim, floor):
    g = torch.Generator().manual_seed(4)
    shape = (2, 4, 3, 3) if channel_dim == 1 else (4, 5, 3)
    p = random_class_probs(g, shape, floor=1e-4, dim=channel_dim)
    # force extremes so the clip matters: one voxel all background, one all class 3
    pm = p.movedim(channel_dim, -1).clone()
    pm.reshape(-1, 4)[0] = torch.tensor([1.0, 0, 0, 0])
    pm.reshape(-1, 4)[1] = torch.tensor([0.0, 0, 0, 1])
    p = pm.movedim(-1, channel_dim).contiguous()
    got = region_probabilities(p, regions, floor, channel_dim=channel_dim)
    assert got.shape[channel_dim] == len(regions)
    for i, r in enumerate(regions):
        labels = [r] if isinstance(r, int) else list(r)
        expected = sum(p.select(channel_dim, l) for l in labels).clamp(floor, 1 - floor)
        torch.testing.assert_close(got.select(channel_dim, i), expected, rtol=0, atol=1e-7)
    assert got.min() >= floor - 1e-8 and got.max() <= 1 - floor + 1e-7
    off = sigmoid_offset(got)
    assert torch.isfinite(off).all()
