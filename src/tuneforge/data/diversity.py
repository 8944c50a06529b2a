"""Diversity by clustering (seed 002): k-means over TF-IDF features, then a subset spread over the clusters.

    from tuneforge.data.diversity import select_diverse
    keep, report = select_diverse(texts, clusters=8, subset=500, max_per_cluster=None, seed=42)
    print(report.render())

Within a cluster, records closest to the cluster centre come first, so a cap keeps the most typical ones and
one example per cluster shows what the cluster is about. A subset takes clusters in turn (round robin), so
small clusters are not drowned by big ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuneforge.errors import DataError


@dataclass
class ClusterReport:
    sizes: list[int] = field(default_factory=list)  # records per cluster, before selection
    kept: list[int] = field(default_factory=list)  # records per cluster, after selection
    examples: list[str] = field(default_factory=list)  # the most central record of each cluster

    def render(self, width: int = 70) -> str:
        lines = [f"clusters: {len(self.sizes)} (records -> kept)"]
        for i, (size, kept, example) in enumerate(zip(self.sizes, self.kept, self.examples, strict=True)):
            text = " ".join(example.split())
            text = text[: width - 1] + "…" if len(text) > width else text
            lines.append(f"  {i:3d}: {size:6d} -> {kept:6d}  {text}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"sizes": self.sizes, "kept": self.kept, "examples": self.examples}


def cluster_texts(texts: list[str], clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster label per text, distance of each text to its cluster centre)."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    if clusters > len(texts):
        raise DataError(
            f"diversity_clusters ({clusters}) is more than the {len(texts)} records left after "
            f"cleaning; use at most {len(texts)}"
        )
    features = TfidfVectorizer(max_features=50_000, sublinear_tf=True, dtype=np.float32).fit_transform(texts)
    kmeans = KMeans(n_clusters=clusters, random_state=seed, n_init=3).fit(features)
    distances = kmeans.transform(features)[np.arange(len(texts)), kmeans.labels_]
    return kmeans.labels_, distances


def select_diverse(
    texts: list[str], clusters: int, subset: int | None, max_per_cluster: int | None, seed: int
) -> tuple[list[int], ClusterReport]:
    """Indexes of the texts to keep (in their original order) and the cluster report."""
    labels, distances = cluster_texts(texts, clusters, seed)
    members = [sorted(np.flatnonzero(labels == c), key=lambda i: distances[i]) for c in range(clusters)]
    if max_per_cluster:
        members = [m[:max_per_cluster] for m in members]
    chosen = [list(m) for m in members]
    if subset is not None:
        chosen = [[] for _ in members]
        taken, depth = 0, 0
        while taken < subset and any(depth < len(m) for m in members):
            for c, m in enumerate(members):
                if depth < len(m) and taken < subset:
                    chosen[c].append(m[depth])
                    taken += 1
            depth += 1
    report = ClusterReport(
        sizes=[int((labels == c).sum()) for c in range(clusters)],
        kept=[len(c) for c in chosen],
        examples=[texts[m[0]] if m else "" for m in members],
    )
    return sorted(int(i) for c in chosen for i in c), report
