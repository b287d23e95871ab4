//! How deep a statement's expression trees can get, read off its tokens.
//!
//! sqlparser parses a left-associative chain (`1+1+…+1`, `a OR b OR …`,
//! `SELECT … UNION ALL SELECT …`) in a loop, but the tree it builds is as
//! deep as the chain is long, and everything after the parser (naming,
//! displaying, optimizing, evaluating and dropping expressions) walks such
//! trees recursively. A chain of a few hundred terms used to overflow a
//! worker's stack and abort the whole server. The front refuses statements
//! whose estimated depth exceeds [`MAX_EXPRESSION_DEPTH`] before anything
//! else sees them, with SQLSTATE 54001 as Postgres answers for
//! `max_stack_depth`; the server's threads have stacks sized so that every
//! statement under the limit plans and runs.
//!
//! The estimate is an upper bound of the depth of operator chains: per
//! parenthesis level it counts the operators since the last point where a
//! new sibling expression starts (a comma or a clause keyword), and adds the
//! counts of all enclosing levels. Set operators count at their level until
//! the level closes.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Span, Token, TokenWithSpan};

/// The deepest operator nesting a statement may have (see the module docs).
///
/// Postgres refuses comparably deep statements once they pass its 2 MB
/// `max_stack_depth`; 2,000 covers generated `IN`-style `OR` chains and
/// `UNION ALL` reports of hundreds of branches.
pub const MAX_EXPRESSION_DEPTH: usize = 2_000;

/// Operator precedence groups, loosest first: a chain of one group nests
/// one level per operator, while a looser operator starts a new operand
/// chain for every tighter group (`a = 1 OR a = 2` is `OR` over two
/// one-deep comparisons, not three levels).
const GROUPS: usize = 8;

/// One parenthesis level's running counts.
#[derive(Default)]
struct Level {
    /// Operators per precedence group since the current expression started.
    groups: [usize; GROUPS],
    /// Set operators (`UNION`, `INTERSECT`, `EXCEPT`) at this level.
    set: usize,
}

impl Level {
    fn depth(&self) -> usize {
        self.groups
            .iter()
            .fold(self.set, |sum, n| sum.saturating_add(*n))
    }

    fn operator(&mut self, group: usize) {
        if let Some(n) = self.groups.get_mut(group) {
            *n = n.saturating_add(1);
        }
        for tighter in self.groups.iter_mut().skip(group + 1) {
            *tighter = 0;
        }
    }

    fn new_expression(&mut self) {
        self.groups = [0; GROUPS];
    }
}

/// The estimated deepest operator nesting of one statement's tokens, and
/// where it is reached.
pub fn expression_depth(tokens: &[TokenWithSpan]) -> (usize, Option<Span>) {
    let mut levels = vec![Level::default()];
    // Sum of the depths of every level but the innermost (plus one per
    // parenthesis).
    let mut enclosing = 0usize;
    let mut deepest = (0usize, None);
    for token in tokens {
        match &token.token {
            Token::LParen | Token::LBracket => {
                if let Some(level) = levels.last() {
                    enclosing = enclosing.saturating_add(level.depth().saturating_add(1));
                }
                levels.push(Level::default());
                if enclosing > deepest.0 {
                    deepest = (enclosing, Some(token.span));
                }
                continue;
            }
            Token::RParen | Token::RBracket => {
                if levels.len() > 1 {
                    levels.pop();
                    if let Some(level) = levels.last() {
                        enclosing = enclosing.saturating_sub(level.depth().saturating_add(1));
                    }
                }
                continue;
            }
            _ => {}
        }
        let Some(level) = levels.last_mut() else {
            continue;
        };
        match classify(&token.token) {
            Role::Operator(group) => level.operator(group),
            Role::SetOperator => {
                level.set = level.set.saturating_add(1);
                level.new_expression();
            }
            Role::StartsExpression => level.new_expression(),
            Role::Other => continue,
        }
        let depth = enclosing.saturating_add(level.depth());
        if depth > deepest.0 {
            deepest = (depth, Some(token.span));
        }
    }
    deepest
}

enum Role {
    /// Makes the tree one deeper: binary and unary operators, casts, with
    /// their precedence group (0 loosest).
    Operator(usize),
    /// `UNION` / `INTERSECT` / `EXCEPT`.
    SetOperator,
    /// A new sibling expression starts after it.
    StartsExpression,
    Other,
}

fn classify(token: &Token) -> Role {
    match token {
        Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship => Role::Operator(3),
        Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::Tilde
        | Token::ExclamationMark
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Arrow
        | Token::LongArrow => Role::Operator(4),
        Token::Plus | Token::Minus | Token::StringConcat => Role::Operator(5),
        Token::Mul | Token::Div | Token::DuckIntDiv | Token::Mod => Role::Operator(6),
        Token::DoubleColon => Role::Operator(7),
        Token::Comma => Role::StartsExpression,
        Token::Word(w) if w.quote_style.is_none() => match w.keyword {
            Keyword::OR => Role::Operator(0),
            Keyword::AND => Role::Operator(1),
            Keyword::NOT => Role::Operator(2),
            Keyword::IS | Keyword::LIKE | Keyword::ILIKE | Keyword::BETWEEN | Keyword::IN => {
                Role::Operator(3)
            }
            Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT => Role::SetOperator,
            Keyword::SELECT
            | Keyword::FROM
            | Keyword::WHERE
            | Keyword::GROUP
            | Keyword::HAVING
            | Keyword::ORDER
            | Keyword::LIMIT
            | Keyword::OFFSET
            | Keyword::ON
            | Keyword::USING
            | Keyword::WHEN
            | Keyword::THEN
            | Keyword::ELSE
            | Keyword::END
            | Keyword::WINDOW
            | Keyword::QUALIFY
            | Keyword::VALUES
            | Keyword::SET
            | Keyword::RETURNING => Role::StartsExpression,
            _ => Role::Other,
        },
        _ => Role::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    fn depth(sql: &str) -> usize {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        expression_depth(&tokens).0
    }

    #[test]
    fn chains_count_their_operators() {
        assert_eq!(depth("SELECT 1"), 0);
        assert_eq!(depth("SELECT 1+1+1"), 2);
        let long = format!("SELECT 1{}", "+1".repeat(300));
        assert_eq!(depth(&long), 300);
    }

    #[test]
    fn siblings_do_not_add_up() {
        let list = format!("SELECT {}", vec!["a+b"; 500].join(", "));
        assert_eq!(depth(&list), 1);
        assert_eq!(depth("SELECT a+b FROM t WHERE c = 1 AND d = 2"), 2);
    }

    #[test]
    fn looser_operators_start_new_operand_chains() {
        let ors = vec!["a = 1"; 100].join(" OR ");
        assert_eq!(depth(&format!("SELECT * FROM t WHERE {ors}")), 100);
        assert_eq!(depth("SELECT a*b + c*d + e*f"), 3);
    }

    #[test]
    fn nesting_adds_the_enclosing_chain() {
        // 1 + 1 + (1 + 1 + 1): the inner chain sits under two operators and a
        // parenthesis.
        assert_eq!(depth("SELECT 1 + 1 + (1 + 1 + 1)"), 5);
        // Closing a parenthesis restores the outer level's count.
        assert_eq!(depth("SELECT (1 + 1 + 1) + 1, 2"), 3);
    }

    #[test]
    fn parentheses_alone_count() {
        let deep = format!("SELECT {}1{}", "(".repeat(3000), ")".repeat(3000));
        assert_eq!(depth(&deep), 3000);
    }

    #[test]
    fn set_operations_count_per_level() {
        let union = vec!["SELECT a FROM t WHERE a IN (SELECT b FROM u)"; 200].join(" UNION ALL ");
        let d = depth(&union);
        assert!((199..=210).contains(&d), "{d}");
    }
}
