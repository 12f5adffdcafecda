"""save_pretrained_split: config.json plus a directory pytorch_model.bin/ holding one file per
tensor and key_to_filename.json. Like the library, it writes no tokenizer."""

from __future__ import annotations

import json
import os

import torch


def save_pretrained_split(model, save_directory):
    weights = os.path.join(save_directory, "pytorch_model.bin")
    os.makedirs(weights, exist_ok=True)
    model.config.save_pretrained(save_directory)
    names = {}
    for i, (key, tensor) in enumerate(model.state_dict().items()):
        names[key] = f"p{i}.{key}"
        torch.save(tensor.clone(), os.path.join(weights, names[key]))
    with open(os.path.join(weights, "key_to_filename.json"), "w") as f:
        json.dump(names, f)
