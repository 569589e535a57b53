"""The dataset card (README.md) written beside the SFT data, with Hugging Face `configs` front matter."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from neucodec_assets.sft.training_ids import (
    IM_END,
    IM_START,
    SPEECH_START,
    TARGET_MODEL,
)


@dataclass
class CardInputs:
    """What the card states; paths are relative to the card's folder."""

    totals: dict[str, float | int]
    by_language: pl.DataFrame
    by_dataset: pl.DataFrame
    by_split: pl.DataFrame
    shards: int
    validation_fraction: float
    split_seed: str
    tokenizer: str | None
    dropped: dict[str, int] = field(default_factory=dict)
    records_paths: dict[str, str] = field(default_factory=dict)  # split -> glob, for the splits with records
    packed: dict[str, int | float] | None = None  # block_size, blocks, tokens, fill ratio
    packed_paths: dict[str, str] = field(default_factory=dict)  # split -> glob
    split_path: str = "__sft_meta__/split.parquet"
    chart_paths: dict[str, str] = field(default_factory=dict)  # alt text -> relative path
    quality: pl.DataFrame | None = None  # decode round-trip means per language (from encoding_progress)
    version: str | None = None  # the build this card publishes; its files are under version_path
    version_path: str = ""


def _table(frame: pl.DataFrame) -> str:
    """A markdown table; floats with two decimals, integers with thousands separators, flags as yes/no."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = []
    for row in frame.iter_rows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f"{value:,.2f}")
            elif isinstance(value, bool):  # before int: True is an int
                cells.append("yes" if value else "no")
            elif isinstance(value, int):
                cells.append(f"{value:,}")
            else:
                cells.append(str(value))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def _config(name: str, default: bool, paths: dict[str, str]) -> list[str]:
    """One entry of the `configs` list: a split per glob."""
    lines = [f"- config_name: {name}", *(["  default: true"] if default else []), "  data_files:"]
    for split, path in paths.items():
        lines += [f"  - split: {split}", f'    path: "{path}"']
    return lines


def _front_matter(inputs: CardInputs) -> str:
    """YAML that tells `datasets` which files make up each config and split (packed is the default when present)."""
    lines = ["---", "task_categories:", "- text-to-speech", "tags:", "- neucodec", "- speech-tokens"]
    if inputs.records_paths or inputs.packed_paths:
        lines.append("configs:")
    if inputs.records_paths:
        lines += _config("records", not inputs.packed_paths, inputs.records_paths)
    if inputs.packed_paths:
        lines += _config("packed", True, inputs.packed_paths)
    lines.append("---")
    return "\n".join(lines)


def render_card(inputs: CardInputs) -> str:
    """The README.md text."""
    t = inputs.totals
    parts = [
        _front_matter(inputs),
        "",
        "# neucodec SFT dataset",
        "",
        f"Speech tokens ([neucodec](https://huggingface.co/neuphonic/neucodec), 50 tokens per second) paired with "
        f"transcripts, for finetuning [{TARGET_MODEL}](https://huggingface.co/{TARGET_MODEL}).",
        "",
        "## Totals",
        "",
        f"- shards: {inputs.shards:,}",
        f"- segments: {int(t.get('segments', 0)):,}",
        f"- hours: {float(t.get('hours', 0.0)):,.2f}",
        f"- speech tokens: {int(t.get('speech_tokens', 0)):,}",
    ]
    if "training_tokens" in t:
        parts.append(f"- training tokens (input_ids): {int(t['training_tokens']):,}")
    parts += [
        "",
        "### Per language",
        "",
        _table(inputs.by_language),
        "",
        "### Per dataset",
        "",
        _table(inputs.by_dataset),
        "",
        "### Per split",
        "",
        _table(inputs.by_split),
        "",
    ]
    for alt, path in inputs.chart_paths.items():
        parts += [f"![{alt}]({path})", ""]
    parts += [
        "## Records",
        "",
        "One parquet file per source shard and split (`<split>/<shard>.parquet`), one row per segment present in "
        "both the tokens file and the shard's metadata: `segment_id`, `dataset`, `language`, `speaker`, `text`, "
        "`audio_seconds` "
        "(token_count / 50), `token_count`, `neucodec_tokens` (list<uint16>)"
        + (", `input_ids` (list<uint32>)." if inputs.tokenizer else "."),
        "",
        f"Training text: `{IM_START}{{speaker}}: {{text}}{SPEECH_START}` + one `<|s_{{code}}|>` per code + "
        f"`{IM_END}`"
        + (f"; `input_ids` are its ids under the tokenizer `{inputs.tokenizer}`." if inputs.tokenizer else "."),
        "",
        "## Split",
        "",
        f"Validation fraction {inputs.validation_fraction:g} (seed {inputs.split_seed!r}): all segments of a speaker "
        "(per dataset) are on one side; segments without a speaker are assigned by a hash of their segment id. "
        "The records of each split are in their own folder (`train/`, `validation/`), which the `records` config "
        "loads as its splits"
        + ("" if len(inputs.records_paths) > 1 else " (a split without records is left out)")
        + f"; `{inputs.split_path}` lists the side of every segment (columns shard, segment_id, split)."
        + (" The `packed` config is split the same way." if inputs.packed_paths else ""),
        "",
    ]
    if inputs.packed:
        p = inputs.packed
        parts += [
            "## Packed",
            "",
            f"Blocks of up to {int(p['block_size']):,} tokens of whole documents: `input_ids`, `position_ids` "
            "(restarting at 0 per document) and `attention_mask` (the document lengths), all uint32. "
            f"{int(p['blocks']):,} blocks, {int(p['tokens']):,} tokens, fill {float(p['fill_ratio']):.1%}, "
            f"{int(p['oversized_documents']):,} documents longer than a block (each alone in its block).",
            "",
        ]
    if inputs.quality is not None and not inputs.quality.is_empty():
        parts += [
            "## Token quality (decode round trip)",
            "",
            "A seeded sample of each shard's segments decoded with neucodec's own decoder and compared with the "
            "source audio at 16 kHz (STOI, wide-band PESQ, SI-SDR, log-mel distance; means per language, weighted "
            "by sampled segments). Listenable pairs are in the bucket under `<shard>/roundtrip/`.",
            "",
            _table(inputs.quality),
            "",
        ]
    if inputs.version:
        parts += [
            "## Version",
            "",
            f"This card publishes build `{inputs.version}`: its packed blocks, split file and charts are under "
            f"`{inputs.version_path}`, which nothing rewrites. A rebuild writes a new version folder and then "
            "replaces this card in one write; the folder this card names is kept until the rebuild after that. "
            "The `records` config reads every shard's latest records file (one file per shard and split, each "
            "replaced whole when the shard is paired again).",
            "",
        ]
    if inputs.dropped:
        parts += ["## Left out", "", "Segments dropped while pairing, by reason:", ""]
        parts += [f"- {reason}: {count:,}" for reason, count in inputs.dropped.items() if count]
        parts.append("")
    return "\n".join(parts)
