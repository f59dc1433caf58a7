"""Batched linear probes: ridge and L2-logistic regression for many probes and many fits in single tensor ops.

A sweep fits one probe per (layer, position) and, for k-fold cross-validation, one per fold plus one on all rows.
Instead of a Python loop over scikit-learn, every fit here is one slice of a batch:

- probes `P` share nothing but the rows, so their features are stacked as X [P, N, H];
- fits `F` share the features and differ only in which rows they train on. Rows are grouped in blocks (the CV
  folds); `include` [F, K] says which blocks each fit trains on (all but fold f, or all of them).

Both solvers minimise the scikit-learn objectives with `fit_intercept=False`:
ridge   sum_i m_i (x_i.w - y_i)^2 + alpha |w|^2                     (sklearn Ridge(alpha))
logit   sum_i m_i logloss(y_i, x_i.w) + alpha/2 |w|^2               (sklearn LogisticRegression(C=1/alpha))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


CG_RTOL = 0.1  # inexact Newton: loose CG steps, more of them, fewer passes over X in all


@dataclass
class Fits:
    weights: torch.Tensor  # [P, H, F]
    train_logits: torch.Tensor  # [P, N, F]: every fit's prediction on every row it was given (train or not)
    iterations: int = 0  # Newton steps (logistic) or CG steps (ridge)


def _gram_inverse(X: torch.Tensor, scale: float, alpha: float):
    """(scale X^T X + alpha I)^-1 per probe [P, H, H] (float64), applied to [P, H, F]: the shared preconditioner.

    It is built from all rows, so one factorisation per probe serves every fold's fit: a fold's system differs
    from it only by the rows held out, which keeps the preconditioned system well conditioned.
    """
    gram = torch.bmm(X.transpose(1, 2), X).double() * scale
    gram.diagonal(dim1=1, dim2=2).add_(alpha)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram))

    def apply(r: torch.Tensor) -> torch.Tensor:
        return torch.bmm(inverse, r.double()).to(r.dtype)

    return apply


def _conjugate_gradient(multiply, rhs: torch.Tensor, precondition, max_iter: int, rtol: float):
    """Preconditioned CG for every column of rhs [P, H, F] at once; stops when all residuals fell by rtol."""
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = precondition(residual)
    direction = z
    rz = (residual * z).sum(1)
    start = residual.norm(dim=1).clamp_min(1e-30)
    steps = 0
    for steps in range(1, max_iter + 1):
        product = multiply(direction)
        a = rz / (direction * product).sum(1).clamp_min(1e-30)
        solution = solution + a[:, None] * direction
        residual = residual - a[:, None] * product
        if (residual.norm(dim=1) <= rtol * start).all():
            break
        z = precondition(residual)
        rz_next = (residual * z).sum(1)
        direction = z + (rz_next / rz.clamp_min(1e-30))[:, None] * direction
        rz = rz_next
    return solution, steps


def _masks(include: torch.Tensor, block_of_row: torch.Tensor, dtype) -> torch.Tensor:
    return include.to(dtype)[:, block_of_row].T.contiguous()  # [N, F]: 1 where fit f trains on row n


def fit_ridge(X: torch.Tensor, y: torch.Tensor, block_of_row: torch.Tensor, include: torch.Tensor, alpha: float,
              max_iter: int = 200, rtol: float = 1e-7) -> Fits:
    """Solve (X^T M_f X + alpha I) w = X^T M_f y for every probe and fit by preconditioned CG.

    The full-data fit is exact after one step (its system is the preconditioner); fold fits take a few more.
    """
    masks = _masks(include, block_of_row, X.dtype)
    y = y.to(X.dtype)
    rhs = torch.bmm(X.transpose(1, 2), (masks * y[:, None]).expand(X.shape[0], -1, -1))

    def multiply(v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(X.transpose(1, 2), masks * torch.bmm(X, v)) + alpha * v

    weights, steps = _conjugate_gradient(multiply, rhs, _gram_inverse(X, 1.0, alpha), max_iter, rtol)
    return Fits(weights=weights, train_logits=torch.bmm(X, weights), iterations=steps)


def _logistic_loss(logits: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """Objective per (probe, fit) [P, F]; logits [P, N, F], masks [N, F], weights [P, H, F]."""
    per_row = torch.nn.functional.softplus(logits) - y[:, None] * logits
    return (per_row * masks).sum(1) + 0.5 * alpha * (weights * weights).sum(1)


def fit_logistic(X: torch.Tensor, y: torch.Tensor, block_of_row: torch.Tensor, include: torch.Tensor, alpha: float,
                 max_iter: int = 100, tol: float = 1e-4, cg_iter: int = 50) -> Fits:
    """Newton's method with preconditioned-CG steps, all probes and fits at once.

    The preconditioner is Boehning's bound X^T X / 4 + alpha I (the Hessian at w = 0, all rows), so early steps
    are nearly exact. A step that raises a fit's objective is halved for that fit alone. Stops when every fit's
    largest gradient entry is below `tol` times its value at w = 0 (or after max_iter Newton steps).
    """
    P, N, H = X.shape
    F = include.shape[0]
    y = y.to(X.dtype)
    masks = _masks(include, block_of_row, X.dtype)
    precondition = _gram_inverse(X, 0.25, alpha)

    weights = torch.zeros(P, H, F, dtype=X.dtype, device=X.device)
    logits = torch.zeros(P, N, F, dtype=X.dtype, device=X.device)
    loss = _logistic_loss(logits, y, masks, weights, alpha)
    first_gradient = None
    iteration = 0
    for iteration in range(1, max_iter + 1):
        probs = torch.sigmoid(logits)
        gradient = torch.bmm(X.transpose(1, 2), (probs - y[:, None]) * masks) + alpha * weights
        largest = gradient.abs().amax(1)  # [P, F]
        if first_gradient is None:
            first_gradient = largest.clamp_min(1e-12)
        active = largest > tol * first_gradient
        if not active.any():
            break
        curvature = probs * (1 - probs) * masks  # [P, N, F]

        def hessian_times(v: torch.Tensor) -> torch.Tensor:
            return torch.bmm(X.transpose(1, 2), curvature * torch.bmm(X, v)) + alpha * v

        # An inexact Newton step: CG to a relative residual of 1e-3 is enough for quadratic-like convergence.
        step, _ = _conjugate_gradient(hessian_times, -gradient * active[:, None], precondition, cg_iter, CG_RTOL)

        # Safeguard: halve the step of any fit whose objective would rise.
        scale = torch.ones(P, F, dtype=X.dtype, device=X.device)
        for _ in range(20):
            trial_weights = weights + scale[:, None] * step
            trial_logits = torch.bmm(X, trial_weights)
            trial_loss = _logistic_loss(trial_logits, y, masks, trial_weights, alpha)
            worse = trial_loss > loss + 1e-6 * loss.abs()
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
        weights, logits, loss = trial_weights, trial_logits, torch.minimum(trial_loss, loss)
    return Fits(weights=weights, train_logits=logits, iterations=iteration)


def _multinomial_loss(V: torch.Tensor, Xs: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, scale: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """Objective per (probe, fit) [P, F] in the rescaled weights V = W * scale (see fit_multinomial)."""
    logits = torch.einsum("pnh,phcf->pncf", Xs, V)
    per_row = torch.logsumexp(logits, dim=2) - logits.gather(2, y.view(1, -1, 1, 1).expand(
        logits.shape[0], -1, 1, logits.shape[3])).squeeze(2)  # [P, N, F]
    weights = V / scale[:, :, None, None]
    return (per_row * masks).sum(1) + 0.5 * alpha * (weights * weights).sum((1, 2))


def fit_multinomial(X: torch.Tensor, y: torch.Tensor, n_classes: int, block_of_row: torch.Tensor,
                    include: torch.Tensor, alpha: float, max_iter: int = 100, tol: float = 1e-4) -> Fits:
    """Multinomial (softmax) logistic regression, sklearn's LogisticRegression(C=1/alpha) objective with
    fit_intercept=False, for every probe and fit at once: weights [P, H, C, F], train_logits [P, N, C, F].

    The objectives are separable, so one L-BFGS run on their sum finds every fit's optimum. It runs in rescaled
    weights V = W * rms(x) (the same objective): hidden states have a few huge dimensions, and the rescaling keeps
    L-BFGS from crawling along them. It runs at most 20 * max_iter L-BFGS iterations (max_iter is the sweep's
    Newton-step budget for the binary solver, each step worth many passes over the rows) and stops when the largest
    gradient entry is below tol times its value at zero.
    """
    P, N, H = X.shape
    F = include.shape[0]
    masks = _masks(include, block_of_row, X.dtype)
    y = y.long()
    scale = X.square().mean(dim=1).sqrt().clamp_min(1e-6)  # [P, H]: root mean square (the intercept column: 1)
    Xs = X / scale[:, None, :]
    V = torch.zeros(P, H, n_classes, F, dtype=X.dtype, device=X.device, requires_grad=True)
    with torch.no_grad():
        zero = V.detach().clone().requires_grad_(True)
    first = torch.autograd.grad(_multinomial_loss(zero, Xs, y, masks, scale, alpha).sum(), zero)[0]
    threshold = tol * float(first.abs().max().clamp_min(1e-12))
    optimizer = torch.optim.LBFGS([V], lr=1, max_iter=20 * max_iter, tolerance_grad=threshold,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")
    steps = 0

    def closure():
        nonlocal steps
        steps += 1
        optimizer.zero_grad()
        loss = _multinomial_loss(V, Xs, y, masks, scale, alpha).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        weights = V / scale[:, :, None, None]
        return Fits(weights=weights, train_logits=torch.einsum("pnh,phcf->pncf", X, weights), iterations=steps)
