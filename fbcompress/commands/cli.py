"""The `fbcompress` command line (Click): the main group and its commands, one small module each.

Every command maps its options to one library call and formats the result; the options they share are declared
once (`options.py`), the error contract once (`group.py`: an `FbError` prints one line and exits 2). Heavy
imports (torch, transformers) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import click

from fbcompress import __version__
from fbcompress.commands.bench import bench_cmd
from fbcompress.commands.check import check_cmd
from fbcompress.commands.data import data_group
from fbcompress.commands.eval import eval_cmd
from fbcompress.commands.export import export_cmd
from fbcompress.commands.group import FbGroup, invoke_command
from fbcompress.commands.quantize import quantize_cmd
from fbcompress.commands.quickstart import quickstart_cmd
from fbcompress.commands.search import eval_retrieval_cmd, index_group, search_cmd
from fbcompress.commands.train import distill_cmd, train_retriever_cmd, train_teacher_cmd


@click.group(cls=FbGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="fbcompress")
def main() -> None:
    """fbcompress: train a FashionBERT teacher, distill, quantize and export it, and measure every form.

    \b
    Typical run on the embedded default (synthetic catalogue, packaged MiniLM backbone):
      fbcompress data synth --recipe quickstart --out runs/qs/data
      fbcompress train-teacher --recipe quickstart --data runs/qs/data --out runs/qs/teacher
      fbcompress eval --model runs/qs/teacher --data runs/qs/data
    """


for command in (data_group, train_teacher_cmd, distill_cmd, train_retriever_cmd, eval_cmd, export_cmd, quantize_cmd,
                check_cmd, bench_cmd, quickstart_cmd, index_group, search_cmd, eval_retrieval_cmd):
    main.add_command(command)


def invoke_in_process(args: list[str]) -> int:
    """Run one fbcompress command in this process; its exit code (0 on success)."""
    return invoke_command(main, args)


if __name__ == "__main__":
    main()
