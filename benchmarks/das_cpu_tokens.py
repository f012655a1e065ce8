"""Token counts of the das_cpu domains (the numbers in ``migu.data.das_cpu``'s docstring), with the
packaged MiniLM tokenizer ([CLS] and [SEP] included):

    python benchmarks/das_cpu_tokens.py [n_train n_test]      (default 600 100)
"""

from __future__ import annotations

import sys

from transformers import AutoTokenizer

from migu.data.das_cpu import das_cpu_sequence
from migu.models.loading import minilm_path


def main(argv: list[str]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    sizes = [int(x) for x in argv[:2]] or [600, 100]
    for task in das_cpu_sequence(n_train=sizes[0], n_test=sizes[1]):
        count = [sum(len(ids) for ids in tokenizer([e.text for e in split], verbose=False)["input_ids"])
                 for split in (task.train, task.test)]  # fmt: skip
        end = task.extras["end_task"]
        print(f"{task.name}: {len(task.train)} / {len(task.test)} passages, {count[0] / 1000:.1f}k / "
              f"{count[1] / 1000:.1f}k tokens; end task {len(end.train)} / {len(end.test)}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
