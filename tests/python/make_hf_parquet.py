"""Writes a parquet file as Hugging Face `datasets` does (`push_to_hub`), with pyarrow only:
an image column `struct<bytes: binary, path: string>` holding the pictures' own encoded bytes,
a label column, optional extra columns, and the `huggingface` key-value metadata that carries
the features (`Image`, `ClassLabel` with its names). Row groups of `row_group_size` rows.

Usage: make_hf_parquet.py SPEC.json, where SPEC is
{"out": PATH, "row_group_size": N, "image_column": "img", "label_column": "label",
 "label_kind": "classlabel" | "int" | "string" | "float", "names": [...],
 "images": [PATH, ...], "labels": [...], "extra": {"caption": [...]},
 "second_image": NAME or null, "metadata": true}
Prints the number of rows and row groups written.
"""
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

spec = json.load(open(sys.argv[1]))
images = []
for p in spec.get("images", []):
    with open(p, "rb") as f:
        images.append({"bytes": f.read(), "path": os.path.basename(p)})
image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
kind = spec.get("label_kind", "classlabel")
label_type = {"classlabel": pa.int64(), "int": pa.int64(), "string": pa.string(), "float": pa.float64()}[kind]
columns, features = {}, {}
if spec["image_column"]:  # null: a table without pictures
    columns[spec["image_column"]] = pa.array(images, type=image_type)
    features[spec["image_column"]] = {"_type": "Image"}
columns[spec["label_column"]] = pa.array(spec["labels"], type=label_type)
if kind == "classlabel":
    features[spec["label_column"]] = {"names": spec["names"], "_type": "ClassLabel"}
else:
    dtype = {"int": "int64", "string": "string", "float": "float64"}[kind]
    features[spec["label_column"]] = {"dtype": dtype, "_type": "Value"}
for name, values in spec.get("extra", {}).items():
    columns[name] = pa.array(values, type=pa.string())
    features[name] = {"dtype": "string", "_type": "Value"}
if spec.get("second_image"):
    columns[spec["second_image"]] = pa.array(images, type=image_type)
    features[spec["second_image"]] = {"_type": "Image"}
table = pa.table(columns)
if spec.get("metadata", True):
    meta = {"info": {"features": features}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
os.makedirs(os.path.dirname(spec["out"]), exist_ok=True)
pq.write_table(table, spec["out"], row_group_size=spec["row_group_size"], compression="snappy")
md = pq.ParquetFile(spec["out"]).metadata
print(json.dumps({"rows": md.num_rows, "row_groups": md.num_row_groups}))
