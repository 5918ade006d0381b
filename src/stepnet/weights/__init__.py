"""Released weights and their manifest, shipped in the package; see
:mod:`stepnet.models.pretrained`."""
