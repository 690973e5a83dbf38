from __future__ import annotations

import pytest
import torch

from retrieval.pooling import gem, global_descriptor, l2_normalize


def test_gem_p1_is_mean_of_clamped():
    x = torch.randn(3, 50, 8)
    torch.testing.assert_close(gem(x, p=1.0), x.clamp_min(1e-6).mean(dim=1))


def test_gem_large_p_tends_to_max():
    x = torch.rand(2, 30, 4) + 0.1
    torch.testing.assert_close(gem(x, p=200.0), x.max(dim=1).values, rtol=0.05, atol=0)


def test_gem_p3_closed_form():
    x = torch.tensor([[[1.0], [2.0], [3.0]]])
    assert gem(x, p=3.0).item() == pytest.approx(((1 + 8 + 27) / 3) ** (1 / 3), rel=1e-6)


def test_cls_gem_concatenation():
    cls = torch.randn(4, 6)
    patches = torch.randn(4, 10, 6)
    d = global_descriptor(cls, patches, pooling="cls+gem")
    assert d.shape == (4, 12)
    want = l2_normalize(torch.cat([l2_normalize(cls), l2_normalize(gem(patches))], dim=1))
    torch.testing.assert_close(d, want)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(4))
    assert global_descriptor(cls, patches, pooling="cls").shape == (4, 6)
    with pytest.raises(ValueError, match="valid"):
        global_descriptor(cls, patches, pooling="max")
