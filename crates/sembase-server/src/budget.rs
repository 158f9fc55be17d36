//! The tokens one request may have run (`--max-request-tokens`), counted over every
//! job it queues: a search's query embedding and its rerank pairs, or a classify
//! request's passes over heads of several models, are one count, so that splitting the
//! work into jobs does not multiply the cap.

use crate::error::ApiError;
use crate::handlers::AppResult;

/// What one request has spent of its token cap so far.
#[derive(Debug)]
pub(crate) struct TokenBudget {
    limit: usize,
    spent: usize,
}

impl TokenBudget {
    /// A request's budget: nothing spent yet.
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, spent: 0 }
    }

    /// Counts `tokens` more for the request, or refuses them with a 413 naming `param`
    /// when the request's total would pass the cap (before anything more is queued).
    pub(crate) fn spend(&mut self, tokens: usize, param: &str) -> AppResult<()> {
        let total = self.spent.saturating_add(tokens);
        if total > self.limit {
            return Err(ApiError::too_many_tokens(total, self.limit).param(param));
        }
        self.spent = total;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_of_one_request_share_the_cap() {
        let mut budget = TokenBudget::new(10);
        budget.spend(6, "queries").unwrap();
        let e = budget.spend(5, "rerank").unwrap_err();
        assert_eq!(e.status, 413);
        assert_eq!(e.body.param.as_deref(), Some("rerank"));
        assert!(e.body.message.contains("11 tokens"), "{}", e.body.message);
        budget.spend(4, "rerank").unwrap();
    }
}
