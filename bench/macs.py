"""Multiply-accumulates per image of the built-in network families (the README's cost table).

python bench/macs.py > bench/results/macs.json
"""

import json

from balanced_vae.config import TrainConfig
from balanced_vae.nets import NETS, NetSpec, count_macs, make_decoder, make_encoder

rows = []
for name, shape in (("digits 8x8", (1, 8, 8)), ("MNIST / Fashion 28x28", (1, 28, 28)), ("CelebA 64x64", (3, 64, 64))):
    for net in NETS if shape[1] > 16 else ("small",):
        config = TrainConfig(net=net).resolved(shape)  # the family's default latent size and width
        spec = NetSpec(shape, config.latent_dim, config.width, net=net)
        enc, dec = make_encoder(spec), make_decoder(spec)
        rows.append(
            {
                "images": name,
                "shape": list(shape),
                "net": net,
                "family": spec.family,
                "width": spec.width,
                "latent_dim": spec.latent_dim,
                "encoder_macs": count_macs(enc, shape),
                "decoder_macs": count_macs(dec, (spec.latent_dim,)),
                "parameters": sum(p.numel() for p in (*enc.parameters(), *dec.parameters())),
            }
        )
print(json.dumps({"bench": "macs", "rows": rows}, indent=2))
