"""The seed models on fused_rnn: training parity with torch.nn, the seed 004 numpy equations,
the dataset loaders on small fixture files, the train command, and DDP on two processes."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fused_rnn
from fused_rnn import data as datasets
from fused_rnn import train as trainer
from fused_rnn.models import MODELS, RNNLanguageModel

TOL = {torch.float64: dict(atol=1e-8, rtol=1e-7), torch.float32: dict(atol=1e-4, rtol=1e-3)}


def _cast(batch, dtype):
    def cast(t):
        return t.to(dtype) if torch.is_floating_point(t) else t

    inputs, target = batch
    return tuple(cast(t) for t in inputs), cast(target)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(MODELS))
def test_training_parity(name, dtype):
    """torch.nn and fused_rnn from the same weights, trained on the same batches: the same
    losses and parameters after every step."""
    ref_task = trainer.make_task(name, impl="torch", limit=96)
    fused_task = trainer.make_task(name, impl="fused", limit=96)
    fused_task.model.load_state_dict(ref_task.model.state_dict())
    models = [ref_task.model.to(dtype), fused_task.model.to(dtype)]
    assert any(isinstance(m, fused_rnn.RNNBase) for m in models[1].modules())
    opts = [ref_task.optimizer(m.parameters()) for m in models]
    for batch in ref_task.train_batches[:4]:
        inputs, target = _cast(batch, dtype)
        losses = []
        for model, opt in zip(models, opts):
            opt.zero_grad()
            loss = ref_task.loss_fn(model(*inputs), target)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], **TOL[dtype])
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, **TOL[dtype], msg=n)


def _numpy_rnn_lm(U, W, V, x, y):
    """Seed 004's equations and its BPTT (bptt_truncate >= T: full BPTT), in numpy."""
    T, H = len(x), W.shape[0]
    s = np.zeros((T + 1, H))  # s[-1] is the zero initial state
    o = np.zeros((T, V.shape[0]))
    for t in range(T):
        s[t] = np.tanh(U[:, x[t]] + W.dot(s[t - 1]))
        e = np.exp(V.dot(s[t]) - V.dot(s[t]).max())
        o[t] = e / e.sum()
    loss = -np.sum(np.log(o[np.arange(T), y]))
    dU, dV, dW = np.zeros_like(U), np.zeros_like(V), np.zeros_like(W)
    delta_o = o.copy()
    delta_o[np.arange(T), y] -= 1.0
    for t in range(T)[::-1]:
        dV += np.outer(delta_o[t], s[t])
        delta_t = V.T.dot(delta_o[t]) * (1 - s[t] ** 2)
        for step in range(0, t + 1)[::-1]:
            dW += np.outer(delta_t, s[step - 1])
            dU[:, x[step]] += delta_t
            delta_t = W.T.dot(delta_t) * (1 - s[step - 1] ** 2)
    return o, loss, dU, dV, dW


def test_rnn_lm_equals_seed_numpy_bptt():
    torch.manual_seed(0)
    model = RNNLanguageModel(12, hidden_dim=7).double()
    x = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    y = x[1:] + [0]
    logp = model(torch.tensor([x]))
    loss = torch.nn.functional.nll_loss(logp[0], torch.tensor(y), reduction="sum")
    loss.backward()
    U = model.rnn.weight_ih_l0.detach().numpy()
    W = model.rnn.weight_hh_l0.detach().numpy()
    V = model.decoder.weight.detach().numpy()
    o, np_loss, dU, dV, dW = _numpy_rnn_lm(U, W, V, x, y)
    np.testing.assert_allclose(logp[0].exp().detach().numpy(), o, atol=1e-12)
    np.testing.assert_allclose(loss.item(), np_loss, rtol=1e-12)
    np.testing.assert_allclose(model.rnn.weight_ih_l0.grad.numpy(), dU, atol=1e-10)
    np.testing.assert_allclose(model.rnn.weight_hh_l0.grad.numpy(), dW, atol=1e-10)
    np.testing.assert_allclose(model.decoder.weight.grad.numpy(), dV, atol=1e-10)


def test_seed_toy_models_learn():
    """The seeds' own toy tasks reach what the seeds show: 'ihello' and the two tag sequences."""
    for name in ("char_rnn", "tagger"):
        task = trainer.make_task(name)
        trainer.train(task, 40, progress=False, log=lambda *_: None)
        assert trainer.evaluate(task)[1] == 1.0, name


def test_convert_torch_built_model():
    torch.manual_seed(0)
    model = MODELS["imdb"](50, impl="torch")
    text = torch.randint(1, 50, (4, 9))
    lengths = torch.tensor([9, 3, 5, 1])
    expected = model(text, lengths)
    converted = fused_rnn.convert(model)
    assert isinstance(converted.rnn, fused_rnn.LSTM)
    torch.testing.assert_close(converted(text, lengths), expected, atol=2e-5, rtol=1e-4)


# ---- dataset loaders on fixture files


def test_jigsaw_loader(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", *datasets.JIGSAW_LABELS])
        w.writerow(["a", "Hello, World!! hello\nagain", 1, 0, 0, 0, 1, 0])
        w.writerow(["b", "bye", 0, 0, 0, 0, 0, 0])
    ids, labels, tok = datasets.load_jigsaw(str(path), size=5)
    assert ids.shape == (2, 5) and labels.shape == (2, 6)
    assert tok.word2idx["<UNK>"] == 0 and tok.word2idx["<PAD>"] == 1
    hello = tok.word2idx["hello"]
    assert ids[0].tolist() == [hello, tok.word2idx["world"], hello, tok.word2idx["again"], 1]
    assert labels[0].tolist() == [1, 0, 0, 0, 1, 0]
    assert datasets.preprocess_comment("It's A-OK") == "it s a ok"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,x\n")
    with pytest.raises(datasets.DataFormatError, match="comment_text"):
        datasets.load_jigsaw(str(bad))
    with pytest.raises(FileNotFoundError, match="no file"):
        datasets.load_jigsaw(str(tmp_path / "missing.csv"))


def test_imdb_loader_tokenizer_vocab_collate(tmp_path):
    for split in ("train", "test"):
        for label, text in (("pos", "Great movie :) <br />loved it"), ("neg", "Bad, bad film :-(")):
            os.makedirs(tmp_path / split / label)
            (tmp_path / split / label / "0_1.txt").write_text(text)
    texts, labels = datasets.load_imdb(str(tmp_path), "train")
    assert sorted(labels) == [0, 1]
    # The seed appends the emoticons without a space: a review ending in a word glues the first
    # emoticon to it. Reproduced as the seed has it.
    assert datasets.imdb_tokenizer("Great movie :) <br />loved it") == [
        "great", "movie", "loved", "it:)"]
    assert datasets.imdb_tokenizer("Bad :-( ") == ["bad", ":("]
    vocab = datasets.build_vocab(texts)
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1 and vocab["bad"] == 2  # most frequent
    ids, ys, lengths = datasets.collate_batch(list(zip(texts, labels)), vocab)
    assert ids.shape[0] == 2 and lengths.tolist() == [len(datasets.imdb_tokenizer(t)) for t in texts]
    assert (ids[lengths.argmin(), lengths.min():] == 0).all()
    with pytest.raises(FileNotFoundError, match="aclImdb"):
        datasets.load_imdb(str(tmp_path / "nope"))


def test_tweets_and_conll_loaders(tmp_path):
    tweets = tmp_path / "Tweets.csv"
    with open(tweets, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tweet_id", "airline_sentiment", "airline", "text"])
        w.writerow([1, "negative", "VA", "@VirginAmerica it's bad\nreally"])
        w.writerow([2, "positive", "VA", "great :)"])
    texts, labels = datasets.load_tweets(str(tweets))
    assert labels == [0, 2] and datasets.tweet_tokenizer(texts[0])[:2] == ["virginamerica", "it"]
    bad = tmp_path / "bad.csv"
    bad.write_text("airline_sentiment,text\nangry,x\n")
    with pytest.raises(datasets.DataFormatError, match="angry"):
        datasets.load_tweets(str(bad))
    conll = tmp_path / "train.txt"
    conll.write_text("Confidence NN B-NP\nin IN B-PP\n\nthe DT B-NP\npound NN I-NP\n")
    sentences = datasets.load_conll2000(str(conll))
    assert sentences == [(["Confidence", "in"], ["NN", "IN"], ["B-NP", "B-PP"]),
                         (["the", "pound"], ["DT", "NN"], ["B-NP", "I-NP"])]
    conll.write_text("only two\n")
    with pytest.raises(datasets.DataFormatError, match="line 1"):
        datasets.load_conll2000(str(conll))


def test_train_command_runs_like_a_user(tmp_path):
    """`python -m fused_rnn train` as a new user runs it: toy data, and a real-format file."""
    out = subprocess.run([sys.executable, "-m", "fused_rnn", "train", "char_rnn", "--epochs", "3",
                          "--no-progress"], capture_output=True, text=True, check=True).stdout
    assert "epoch 3: train loss" in out and "hihell" in out
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", *datasets.JIGSAW_LABELS])
        for i in range(40):
            w.writerow([i, "you are awful" if i % 2 else "nice day", i % 2, 0, 0, 0, i % 2, 0])
    out = subprocess.run([sys.executable, "-m", "fused_rnn", "train", "toxic", "--data", str(path),
                          "--epochs", "2", "--impl", "torch", "--no-progress"],
                         capture_output=True, text=True, check=True).stdout
    assert "Jigsaw" in out and "epoch 2" in out
    bad = subprocess.run([sys.executable, "-m", "fused_rnn", "train", "toxic", "--data",
                          str(tmp_path / "none.csv")], capture_output=True, text=True)
    assert bad.returncode != 0 and "no file" in bad.stderr


# ---- distributed data parallel

DDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from fused_rnn.models import SentimentLSTM
rank, world, rendezvous, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
torch.manual_seed(0)
model = SentimentLSTM(40, impl="fused").double()
g = torch.Generator().manual_seed(1)
batches = [(torch.randint(1, 40, (8, 12), generator=g), torch.randint(1, 13, (8,), generator=g),
            torch.randint(0, 2, (8,), generator=g).double()) for _ in range(3)]
if world > 1:
    # A file rendezvous, not a TCP port: a fixed or guessed port can be taken by another process
    # (EADDRINUSE, or worse a client that joins someone else's store).
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    model = DDP(model)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
for text, lengths, y in batches:
    lo, hi = rank * 8 // world, (rank + 1) * 8 // world  # this rank's share of the global batch
    opt.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy(
        model(text[lo:hi], lengths[lo:hi]).squeeze(1), y[lo:hi])
    loss.backward()
    opt.step()
if rank == 0:
    m = model.module if world > 1 else model
    torch.save({k: v.detach() for k, v in m.state_dict().items()}, out)
if world > 1:
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
"""


def test_ddp_two_processes_match_one(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    rendezvous = tmp_path / "rendezvous"
    single = tmp_path / "single.pt"
    subprocess.run([sys.executable, str(script), "0", "1", str(rendezvous), str(single)],
                   check=True, timeout=300)
    double = tmp_path / "ddp.pt"
    # Each rank's stderr to a file: a pipe read one rank at a time could fill up for the other.
    logs = [tmp_path / f"rank{r}.err" for r in range(2)]
    procs = []
    try:
        for r, log in enumerate(logs):
            with open(log, "w") as err:
                procs.append(subprocess.Popen([sys.executable, str(script), str(r), "2",
                                               str(rendezvous), str(double)], stderr=err))
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for r, (code, log) in enumerate(zip(codes, logs)):
        assert code == 0, f"rank {r} exited with {code}:\n{log.read_text()[-4000:]}"
    a, b = torch.load(single), torch.load(double)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-10, rtol=1e-9, msg=k)
