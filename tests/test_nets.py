import ast

import pytest
import torch

from model import nets


def test_small_cnn_maps_images_to_class_logits():
    net = nets.build("small_cnn", num_classes=7, in_channels=3, width=8)
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 7)
    assert net(torch.randn(1, 3, 64, 48)).shape == (1, 7)  # any size >= 28 reaches the same head


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture"):
        nets.build("resnet9000")


@pytest.mark.parametrize("name", sorted(nets.ARCHS))
def test_network_files_are_self_contained_for_the_archive(name):
    """The file ships alone inside the .mar: one class, and imports of torch only."""
    arch = nets.ARCHS[name]
    tree = ast.parse(arch.file.read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == [arch.cls]
    imported = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert imported <= {"torch", "__future__"}
