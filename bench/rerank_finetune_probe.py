"""Probe (not a product path): fine-tune the quickstart's H128 scorer student on (query ; title, product image) pairs
of the train queries (a relevant product against a same-subcategory one that is not), then re-rank the INT8 query
encoder's top 50 with it. Does a scorer that has seen queries help the second stage?

    python bench/rerank_finetune_probe.py --steps 300            # the text is "query ; title"
    python bench/rerank_finetune_probe.py --steps 300 --no-title # the query alone

Reads runs/quickstart/ (students/h128, index, bundles/search, data). Prints the loss every 50 steps and, for val
and test, nDCG@10 and Recall@10 of the first stage and of the re-ranked list.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

RUN = "runs/quickstart"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--no-title", action="store_true")
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    from fbcompress.data.dataset_dir import SPLITS, DatasetDir
    from fbcompress.data.loader import SplitData, pad_texts
    from fbcompress.data.search_sets import search_queries
    from fbcompress.evaluation.retrieval import retrieval_metrics
    from fbcompress.modeling.backbone import load_tokenizer
    from fbcompress.modeling.checkpoint import load_model
    from fbcompress.recipes import RetrieverSection
    from fbcompress.runtime.embedding import product_texts
    from fbcompress.search.models import open_query_encoder
    from fbcompress.search.searcher import Searcher
    from fbcompress.search.store import open_index
    from fbcompress.training.retriever import training_queries

    torch.manual_seed(0)
    random.seed(0)
    model, ckpt = load_model(f"{RUN}/students/h128")
    tokenizer = load_tokenizer(ckpt.directory)
    dataset = DatasetDir.open(f"{RUN}/data")
    splits = {name: SplitData(dataset, name, tokenizer, model.spec) for name in SPLITS}
    train = splits["train"]
    titles = product_texts(train.records, "title")
    queries = training_queries(train, search_queries(dataset, "train"), tokenizer, 16)

    def text(query: str, title: str) -> str:
        return query if args.no_title else f"{query} ; {title}"

    def logits(texts: list[str], patches: np.ndarray) -> torch.Tensor:
        batch = pad_texts(tokenizer(texts, truncation=True, max_length=48)["input_ids"], 0)
        return model(batch.input_ids, batch.attention_mask, batch.token_type_ids, torch.from_numpy(patches))

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()
    started = time.time()
    for step in range(args.steps):
        rows, texts, labels = [], [], []
        for query in random.sample(queries, 16):
            negative = random.choice(query.hard) if query.hard else random.randrange(len(train))
            if negative in query.relevant:
                continue
            for row, label in ((random.choice(query.positives), 1), (negative, 0)):
                rows.append(row)
                texts.append(text(query.text, titles[row]))
                labels.append(label)
        loss = F.cross_entropy(logits(texts, np.stack([train.patches(r) for r in rows])), torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)
    model.eval()
    index = open_index(f"{RUN}/index")
    searcher = Searcher(open_query_encoder(f"{RUN}/bundles/search/query_encoder.int8.onnx", RetrieverSection()),
                        index)
    where = {p: (name, i) for name, data in splits.items() for i, p in enumerate(data.products)}
    for split in ("val", "test"):
        first, second = [], []
        split_queries = search_queries(dataset, split)
        for query in split_queries:
            ranked = [h.product_id for h in searcher.search(query.text, 100)[0]]
            head = ranked[:50]
            patches = np.stack([splits[where[p][0]].patches(where[p][1]) for p in head])
            with torch.no_grad():
                out = logits([text(query.text, index.titles[index.row_of(p)]) for p in head], patches)
            order = np.argsort(-(out[:, 1] - out[:, 0]).numpy(), kind="stable")
            first.append(ranked)
            second.append([head[i] for i in order] + ranked[50:])
        relevance = [q.relevant for q in split_queries]
        a, b = retrieval_metrics(first, relevance), retrieval_metrics(second, relevance)
        print(f"{split}: nDCG@10 first stage {a['ndcg@10']:.4f} ± {a['ndcg@10_se']:.4f}, re-ranked "
              f"{b['ndcg@10']:.4f} ± {b['ndcg@10_se']:.4f}; Recall@10 {a['recall@10']:.4f} -> {b['recall@10']:.4f}")


if __name__ == "__main__":
    main()
