"""The sizes `pgnas supernets` lists for each built-in super-network: parameters and MACs of one
forward pass at its native input size (3 channels; 1000 classes at 224, 10 at 32), instrumented
layers and p groups. Stored, so that the listing does not build every network (15 s on a 2-core
CPU); tests/test_supernets_builtin.py rebuilds each one and checks these numbers, and prints the
table to paste here when a built-in changes. A super-network registered by the user is measured
when it is listed."""

from __future__ import annotations

LISTED_SIZES: dict[str, dict[str, int]] = {
    "supnet-m": {"params": 26192922, "macs": 3776892672, "layers": 56, "groups": 56},
    "supnet-mi": {"params": 72695194, "macs": 10457372928, "layers": 56, "groups": 56},
    "shake-shake-26-2x32d": {"params": 2923162, "macs": 426689792, "layers": 56, "groups": 56},
    "shake-shake-26-2x16d": {"params": 735514, "macs": 109232768, "layers": 54, "groups": 54},
    "shake-shake-14-2x16d": {"params": 346650, "macs": 52609664, "layers": 30, "groups": 30},
    "shake-shake-8-2x16d": {"params": 152218, "macs": 24298112, "layers": 18, "groups": 18},
    "supnet-e": {"params": 4389220, "macs": 620907552, "layers": 266, "groups": 266},
    "supnet-ei": {"params": 15371560, "macs": 2314115136, "layers": 266, "groups": 266},
    "enas-micro-f8": {"params": 684008, "macs": 45311552, "layers": 266, "groups": 266},
    "supnet-r50": {"params": 28071976, "macs": 4500226048, "layers": 102, "groups": 102},
    "inflated-resnet50-w8": {"params": 416018, "macs": 1700352, "layers": 102, "groups": 102},
    "supnet-d121": {"params": 7978856, "macs": 2834161664, "layers": 119, "groups": 638},
    "densenet121-g8": {"params": 454634, "macs": 4067840, "layers": 119, "groups": 638},
}
