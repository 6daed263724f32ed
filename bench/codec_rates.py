"""Stage 4, the codec: Confluent-framed encode and decode rates of the pipeline's codec against the alternatives.

On the same records (an ``OrderPlaced`` and a ``PlaceOrder`` as the pipeline sends them):

* ``avrocodec``: :class:`schemas.codec.AvroCodec` (fastavro, with the strict validation every encode runs);
* ``fastavro_raw``: fastavro's ``schemaless_writer`` / ``schemaless_reader`` with the same framing, no
  validation (what the codec's checks cost);
* ``apache_avro``: the Apache ``avro`` package (``avro.io.DatumWriter`` / ``DatumReader``), same framing.

Every variant writes the Confluent frame (``00`` + schema id, from an in-memory registry) + body, and the bodies
are checked to be byte-identical.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.raw import order_placed_value
from schemas.catalog import SchemaCatalog, SchemaVersion
from schemas.codec import HEADER_SIZE, AvroCodec, frame


def sample_records() -> dict[str, dict[str, Any]]:
    """The records timed, by name: values as the pipeline's producers hand them to the codec."""
    order_id, user_id = "o-6f1c1e4a-58a4-4a36-9a1e-8f0a4b1f5f21", "u-0c2b4f0e-7a61-4f1e-a0a4-3f7d2d8c9b10"
    skus = ["SKU-7f3a9c01d2", "SKU-1b2c3d4e5f", "SKU-a0b1c2d3e4"]
    place = {
        "order_id": order_id,
        "user_id": user_id,
        "lines": [{"sku": s, "quantity": 1 + i, "unit_price_cents": 500 + 250 * i} for i, s in enumerate(skus)],
        "payment": {"method": "card", "token": "tok_ok"},
        "idempotency_key": order_id,
        "requested_at": 1_767_225_600_000,
        "user_version": 1,
    }
    return {"OrderPlaced": order_placed_value(order_id, user_id, skus, 1_767_225_600_000), "PlaceOrder": place}


def _rate(fn: Callable[[], object], iterations: int) -> dict[str, float]:
    for _ in range(min(200, iterations)):  # warm caches
        fn()
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    seconds = time.perf_counter() - start
    return {"per_s": round(iterations / seconds, 1), "us_per_op": round(seconds / iterations * 1e6, 2)}


Codec = tuple[Callable[[Any], bytes], Callable[[bytes], Any]]


def _avrocodec(codec: AvroCodec, sv: SchemaVersion) -> Codec:
    def encode(value: Any) -> bytes:
        return codec.encode(sv.full_name, value, version=sv.version)

    return encode, codec.decode


def _apache(codec: AvroCodec, sv: SchemaVersion) -> Codec:
    import avro.io
    import avro.schema

    schema = avro.schema.parse(json.dumps(sv.definition))
    writer, reader = avro.io.DatumWriter(schema), avro.io.DatumReader(schema)
    prefix = frame(codec.schema_id(sv))

    def encode(value: Any) -> bytes:
        out = io.BytesIO()
        out.write(prefix)
        writer.write(value, avro.io.BinaryEncoder(out))
        return out.getvalue()

    def decode(data: bytes) -> Any:
        return reader.read(avro.io.BinaryDecoder(io.BytesIO(data[HEADER_SIZE:])))

    return encode, decode


def _fastavro(codec: AvroCodec, sv: SchemaVersion) -> Codec:
    from fastavro import schemaless_reader, schemaless_writer

    prefix = frame(codec.schema_id(sv))

    def encode(value: Any) -> bytes:
        out = io.BytesIO()
        out.write(prefix)
        schemaless_writer(out, sv.parsed, value)
        return out.getvalue()

    def decode(data: bytes) -> Any:
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        return schemaless_reader(buf, sv.parsed, None)

    return encode, decode


def run_codec(catalog: SchemaCatalog, iterations: int) -> dict[str, Any]:
    codec = AvroCodec(catalog)
    records: dict[str, Any] = {}
    for name, value in sample_records().items():
        sv = catalog.latest(name)
        encoded = codec.encode(sv.full_name, value, version=sv.version)
        decoded = codec.decode(encoded).value  # timestamps as aware datetimes: what Apache avro insists on
        variants = {
            "avrocodec": _avrocodec(codec, sv),
            "fastavro_raw": _fastavro(codec, sv),
            "apache_avro": _apache(codec, sv),
        }
        figures: dict[str, Any] = {"bytes": len(encoded), "variants": {}}
        for variant, (encode, decode) in variants.items():
            if encode(decoded) != encoded:
                raise AssertionError(f"{variant} does not write the same bytes for {name}")
            figures["variants"][variant] = {
                "encode": _rate(partial(encode, decoded), iterations),
                "decode": _rate(partial(decode, encoded), iterations),
            }
        fast, apache = figures["variants"]["avrocodec"], figures["variants"]["apache_avro"]
        figures["avrocodec_over_apache"] = {
            op: round(fast[op]["per_s"] / apache[op]["per_s"], 2) for op in ("encode", "decode")
        }
        records[name] = figures
    return {"iterations": iterations, "records": records}
