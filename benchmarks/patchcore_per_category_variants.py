"""One realmix category, one PatchCore bank per variant: level subsets of Lite2 levels 1-4,
Gaussian sigma, coreset ratio, input size, resize rule; I-AUROC, P-AUROC and AU-PRO of each
on the category's test split (every variant is shown: `patchcore_variants.md`, section
"Per category, 2026-12-08"). Features are extracted once per size (cached in /tmp/exp/cache).

    python benchmarks/patchcore_per_category_variants.py CATEGORY SIZE [stretch|pad]
        [RATIOS, e.g. 0.1] [LEVEL SETS as JSON, e.g. "[[2,3],[1,2,3]]"] [GRID LEVEL, e.g. 2]

Each row is appended to /tmp/exp/results.jsonl.
"""
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from refad.api import FeatureCache, build_config, extract_features
from refad.backbones import build_extractor
from refad.data import ImageDataset, load_split, split_validation
from refad.metrics import MetricAccumulator
from refad.models.base import FeatureSpec
from refad.models.patchcore import PatchCore
from refad.models.patchcore.config import PatchCoreConfig
from refad.models.scoring import gaussian_blur

root = Path("../shared/data/realmix")
cat = sys.argv[1]
size = int(sys.argv[2])
resize = sys.argv[3] if len(sys.argv) > 3 else "stretch"
ALL = [1, 2, 3, 4]
SIGMAS = [4, 8, 16]  # the glass and magnetic_tile rows of 2026-12-08 also had 2
RATIOS = [float(x) for x in (sys.argv[4] if len(sys.argv) > 4 else "0.1").split(",")]
LEVELSETS = (json.loads(sys.argv[5]) if len(sys.argv) > 5
             else [[2, 3], [1, 2, 3], [2, 3, 4], [1, 2, 3, 4], [3, 4]])
cfg = build_config(method="patchcore", data="mvtec", root=root, categories=[cat],
                   backbone="tf_efficientnet_lite2", levels=ALL, image_size=size, device="cpu",
                   overrides=["model.embed_dim=null", f"data.resize={resize}"])
dev = torch.device("cpu")
ex = build_extractor(cfg.backbone, dev)
cache = FeatureCache(Path("/tmp/exp/cache"))
train, _ = split_validation(load_split(cfg.data, "train"), cfg.train.val_fraction, cfg.train.seed)
test = load_split(cfg.data, "test")
t = time.time()
tr = extract_features(ex, train, cfg, dev, cache, progress=False)
te = extract_features(ex, test, cfg, dev, cache, progress=False)
print("features", time.time() - t, [x.shape for x in tr], flush=True)
ds = ImageDataset(test, size, ex.mean, ex.std, resize=resize)



def hw(s):
    with Image.open(s.image) as im:
        return (im.height, im.width)
masks = torch.stack([ds._mask_tensor(s, hw(s))[0][0] > 0.5 for s in test])
labels = torch.tensor([s.label for s in test])
out = []
for levels in LEVELSETS:
    li = [ALL.index(lv) for lv in levels]
    trl, tel = [tr[i] for i in li], [te[i] for i in li]
    spec = FeatureSpec(tuple(range(len(trl))), tuple(x.shape[1] for x in trl),
                       tuple(tuple(x.shape[-2:]) for x in trl), size)
    GRID = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    gl = levels.index(GRID) if GRID in levels else 0
    for ratio in RATIOS:
        m = PatchCore(spec, PatchCoreConfig(gaussian_sigma=0, coreset_ratio=ratio, grid_level=gl))
        t = time.time()
        m.fit(([x[i:i + 32] for x in trl] for i in range(0, len(train), 32)), seed=0)
        fit = time.time() - t
        raws = []
        with torch.inference_mode():
            for s in range(0, len(test), 16):
                raws.append(m.score([x[s:s + 16] for x in tel]).maps)
        raw = torch.cat(raws)
        for sigma in SIGMAS:
            maps = gaussian_blur(raw, sigma)
            acc = MetricAccumulator()
            acc.update(maps.flatten(1).amax(1), labels, maps, masks)
            r = acc.compute()
            row = dict(cat=cat, size=size, resize=resize, levels=levels, ratio=ratio, sigma=sigma,
                       I=round(100 * r["i_auroc"], 1), P=round(100 * r["p_auroc"], 1),
                       PRO=round(100 * r["au_pro"], 1) if "au_pro" in r else None, fit=round(fit))
            print(json.dumps(row), flush=True)
            with open("/tmp/exp/results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
