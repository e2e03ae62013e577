# Reads a lastlayer feature store with numpy alone, with the code docs/formats.md shows, and
# prints every row key (hex) with its row as JSON.
import json, pathlib, sys
import numpy as np

store = pathlib.Path(sys.argv[1])
# --- as in docs/formats.md ---
D = json.loads((store / "store.json").read_text())["width"]
rows = {}
for seg in sorted(store.glob("seg-*.rows")):
    b = seg.read_bytes(); off = 32
    while off + 40 <= len(b) and b[off:off+4] == b"RCRD":
        n = int.from_bytes(b[off+4:off+8], "little"); end = off + 40 + n * (32 + 4 * D)
        if end > len(b): break
        keys = [b[off+40+32*i:off+72+32*i].hex() for i in range(n)]
        x = np.frombuffer(b[off+40+32*n:end], dtype="<f4").reshape(n, D)
        rows.update(zip(keys, x)); off = end
# ---
print(json.dumps({"width": D, "keys": list(rows), "rows": [r.tolist() for r in rows.values()]}))
