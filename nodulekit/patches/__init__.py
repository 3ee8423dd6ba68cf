"""Patch geometries (2d, 2.5d, 3d, nine views), resampling, per-nodule extraction, augmentation.

- :mod:`~nodulekit.patches.presets`: each model's geometry (``crop --for MODEL``);
- :mod:`~nodulekit.patches.resample`: sampling a scan region on a grid in mm (SimpleITK);
- :mod:`~nodulekit.patches.views`: the nine views of a cube (MT-CNN);
- :mod:`~nodulekit.patches.crop`: one nodule's patches (CT, agreement, mask) and table rows.

Heavy imports (SimpleITK, h5py) happen inside functions, so importing this package is cheap.
"""
