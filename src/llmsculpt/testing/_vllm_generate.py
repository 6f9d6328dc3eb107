"""Run inside the separate vLLM environment: greedy continuations, printed as one JSON line.

    python _vllm_generate.py JOBS_JSON

JOBS_JSON is a file holding ``[{"model": DIR, "prompts": [[ids...], ...], "max_tokens": N}, ...]``; the
tokenisation is done by the caller so both runtimes see the same ids. All jobs run in this one process
(vLLM's start-up dominates). Prints ``{"DIR": [[ids...], ...], ...}`` as the last line of stdout; a job
that fails gives ``{"DIR": {"error": "..."}}`` instead."""

import gc
import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    results = {}
    for job in json.loads(open(sys.argv[1]).read()):
        try:
            llm = LLM(model=job["model"], trust_remote_code=True, enforce_eager=True, max_model_len=256,
                      dtype="float32", max_num_seqs=8, seed=0)
            params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in job["prompts"]], params, use_tqdm=False)
            results[job["model"]] = [list(o.outputs[0].token_ids) for o in outs]
            del llm
            gc.collect()
        except Exception as exc:  # reported per model, so one bad export does not hide the others
            results[job["model"]] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
