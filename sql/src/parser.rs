//! The fedsql SQL front: splits a query string into statements, parses fedsql's
//! own statements with sqlparser's `Parser`, and hands every other statement's
//! exact text to DataFusion.
//!
//! Why split on tokens rather than parse everything: the standard statements go
//! to datafusion-postgres, whose Postgres-compatibility parser rewrites what
//! psql and BI tools send. Re-printing a sqlparser AST would lose those
//! rewrites, so standard statements keep their original text.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

use crate::ast::*;
use crate::connection::{is_connection_statement, parse_connection_statement, ConnectionStatement};
use crate::error::ParseError;

/// One statement of a query string.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// A fedsql statement, parsed.
    Fedsql {
        statement: FedsqlStatement,
        /// The statement's text, without the trailing semicolon.
        text: String,
        /// Offset of the text in the whole query string, in characters.
        offset: usize,
    },
    /// A statement about the connection itself (cursors, `COPY … TO
    /// STDOUT`), which the Postgres wire runs.
    Connection {
        statement: ConnectionStatement,
        /// The statement's text, without the trailing semicolon.
        text: String,
        /// Offset of the text in the whole query string, in characters.
        offset: usize,
    },
    /// Any other statement: its exact text, for DataFusion.
    Sql { text: String, offset: usize },
}

impl Statement {
    /// The statement's text as written.
    pub fn text(&self) -> &str {
        match self {
            Statement::Fedsql { text, .. }
            | Statement::Connection { text, .. }
            | Statement::Sql { text, .. } => text,
        }
    }

    /// Offset of the statement in the query string, in characters.
    pub fn offset(&self) -> usize {
        match self {
            Statement::Fedsql { offset, .. }
            | Statement::Connection { offset, .. }
            | Statement::Sql { offset, .. } => *offset,
        }
    }
}

/// Splits `sql` into statements and parses the fedsql ones.
///
/// Comment-only and empty statements are dropped, so `""` and `";;"` give an
/// empty vector.
///
/// ```
/// use fedsql_sql::{parse, Statement, FedsqlStatement};
/// let stmts = parse("SHOW SOURCES; SELECT 1").unwrap();
/// assert!(matches!(&stmts[0], Statement::Fedsql { statement: FedsqlStatement::ShowSources, .. }));
/// assert_eq!(stmts[1].text(), "SELECT 1");
/// ```
pub fn parse(sql: &str) -> Result<Vec<Statement>, ParseError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            ParseError::new(
                e.message.clone(),
                char_position(sql, e.location).map(|p| p + 1),
            )
        })?;
    let text = SourceText::new(sql);

    let mut statements = Vec::new();
    for group in split_statements(tokens) {
        let meaningful: Vec<&TokenWithSpan> = group
            .iter()
            .filter(|t| !is_whitespace(&t.token) && t.token != Token::EOF)
            .collect();
        let (Some(first), Some(last)) = (meaningful.first(), meaningful.last()) else {
            continue;
        };
        let (depth, deepest) = crate::complexity::expression_depth(&group);
        if depth > crate::complexity::MAX_EXPRESSION_DEPTH {
            return Err(ParseError {
                message: format!(
                    "statement too complex: its expressions nest {depth} operators deep \
                     (at most {} are planned)",
                    crate::complexity::MAX_EXPRESSION_DEPTH
                ),
                position: deepest
                    .and_then(|s| char_position(sql, s.start))
                    .map(|p| p + 1),
                kind: crate::ParseErrorKind::TooComplex,
            });
        }
        let (start, end) = (text.byte(first.span.start), text.byte(last.span.end));
        let statement_text = sql[start..end].to_string();
        let offset = sql[..start].chars().count();
        let words: Vec<String> = meaningful
            .iter()
            .take(4)
            .map(|t| match &t.token {
                Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
                _ => String::new(),
            })
            .collect();
        if is_fedsql_statement(&words) {
            let mut parser = Parser::new(&dialect).with_tokens_with_locations(group);
            let statement = parse_fedsql(&mut parser, &text)
                .and_then(|s| {
                    if parser.peek_token().token == Token::EOF {
                        Ok(s)
                    } else {
                        parser.expected("end of statement", parser.peek_token())
                    }
                })
                .map_err(|e| ParseError::from_parser_error(&e, sql))?;
            statements.push(Statement::Fedsql {
                statement,
                text: statement_text,
                offset,
            });
        } else if is_connection_statement(&words) {
            let mut parser = Parser::new(&dialect).with_tokens_with_locations(group);
            let statement = parse_connection_statement(&mut parser, &text)
                .and_then(|s| match s {
                    Some(_) if parser.peek_token().token != Token::EOF => {
                        parser.expected("end of statement", parser.peek_token())
                    }
                    s => Ok(s),
                })
                .map_err(|e| ParseError::from_parser_error(&e, sql))?;
            statements.push(match statement {
                Some(statement) => Statement::Connection {
                    statement,
                    text: statement_text,
                    offset,
                },
                None => Statement::Sql {
                    text: statement_text,
                    offset,
                },
            });
        } else {
            statements.push(Statement::Sql {
                text: statement_text,
                offset,
            });
        }
    }
    Ok(statements)
}

/// Whether the leading words (upper-cased) start a fedsql statement.
fn is_fedsql_statement(words: &[String]) -> bool {
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    matches!(
        (w(0), w(1)),
        ("TRAIN", "MODEL")
            | ("CREATE", "SOURCE")
            | ("CREATE", "MODEL")
            | ("DROP", "SOURCE")
            | ("CREATE", "SITE")
            | ("DROP", "SITE")
            | ("CREATE", "ENCODER")
            | ("DROP", "ENCODER")
            | ("DROP", "MODEL")
            | ("SHOW", "SOURCES")
            | ("REFRESH", "SOURCE")
            | ("SHOW", "MODELS")
            | ("SHOW", "VERSIONS")
            | ("EVALUATE", "MODEL")
            | ("RESUME", "TRAINING")
            | ("DESCRIBE", "MODEL")
            | ("ALTER", "MODEL")
            | ("ALTER", "TABLE")
            | ("ALTER", "VIEW")
    ) || w(0) == "TRUNCATE"
        || matches!(
            (w(0), w(1), w(2), w(3)),
            ("CREATE", "OR", "REPLACE", "MODEL") | ("CREATE", "OR", "REPLACE", "ENCODER")
        )
}

fn is_whitespace(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_))
}

/// Splits tokens at top-level semicolons; each group ends with EOF so a
/// sqlparser `Parser` can run on it alone.
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0usize;
    for token in tokens {
        match token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => {
                current.push(TokenWithSpan::new(Token::EOF, token.span));
                groups.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(token);
    }
    if !current.is_empty() {
        let span = current.last().map(|t| t.span).unwrap_or(Span::empty());
        current.push(TokenWithSpan::new(Token::EOF, span));
        groups.push(current);
    }
    groups
}

/// Maps sqlparser's (line, column) locations back to byte offsets of the input.
pub(crate) struct SourceText<'a> {
    pub(crate) sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    fn new(sql: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        SourceText { sql, line_starts }
    }

    /// Byte offset of a location; columns count characters from 1.
    pub(crate) fn byte(&self, loc: Location) -> usize {
        let Some(&line_start) = self.line_starts.get(loc.line.saturating_sub(1) as usize) else {
            return self.sql.len();
        };
        let column = loc.column.saturating_sub(1) as usize;
        self.sql[line_start..]
            .char_indices()
            .nth(column)
            .map(|(i, _)| line_start + i)
            .unwrap_or(self.sql.len())
    }
}

/// The 0-based character offset of a location in `sql`.
pub(crate) fn char_position(sql: &str, loc: Location) -> Option<usize> {
    if loc.line == 0 {
        return None;
    }
    let byte = SourceText::new(sql).byte(loc);
    Some(sql[..byte].chars().count())
}

fn parse_fedsql(p: &mut Parser<'_>, text: &SourceText<'_>) -> Result<FedsqlStatement, ParserError> {
    if parse_word(p, "TRAIN") {
        expect_word(p, "MODEL")?;
        let existing = if p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]) {
            ExistingModel::IfNotExists
        } else if p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]) {
            ExistingModel::Replace
        } else {
            ExistingModel::NewVersion
        };
        return parse_train_body(p, text, existing);
    }
    if p.parse_keyword(Keyword::CREATE) {
        if p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]) {
            if parse_word(p, "ENCODER") {
                return parse_create_encoder(p, true);
            }
            expect_word(p, "MODEL")?;
            return parse_train_body(p, text, ExistingModel::Replace);
        }
        if parse_word(p, "ENCODER") {
            return parse_create_encoder(p, false);
        }
        if parse_word(p, "MODEL") {
            let existing = if p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]) {
                ExistingModel::IfNotExists
            } else {
                ExistingModel::NewVersion
            };
            return parse_train_body(p, text, existing);
        }
        if parse_word(p, "SITE") {
            let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = parse_name(p)?;
            let options = if p.parse_keyword(Keyword::OPTIONS) {
                parse_options(p)?
            } else {
                Vec::new()
            };
            return Ok(FedsqlStatement::CreateSite {
                name,
                if_not_exists,
                options,
            });
        }
        expect_word(p, "SOURCE")?;
        return parse_create_source(p);
    }
    if p.parse_keyword(Keyword::DROP) {
        if parse_word(p, "SITE") {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = parse_name(p)?;
            return Ok(FedsqlStatement::DropSite { name, if_exists });
        }
        if parse_word(p, "SOURCE") {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = parse_name(p)?;
            return Ok(FedsqlStatement::DropSource { name, if_exists });
        }
        if parse_word(p, "ENCODER") {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = parse_name(p)?;
            return Ok(FedsqlStatement::DropEncoder { name, if_exists });
        }
        expect_word(p, "MODEL")?;
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = parse_name(p)?;
        let version = if parse_word(p, "VERSION") {
            Some(p.parse_literal_uint()?)
        } else {
            None
        };
        return Ok(FedsqlStatement::DropModel {
            name,
            if_exists,
            version,
        });
    }
    if parse_word(p, "TRUNCATE") {
        let _ = p.parse_keyword(Keyword::TABLE);
        let _ = p.parse_keyword(Keyword::ONLY);
        let names = p.parse_comma_separated(parse_name_parts)?;
        let _ = p.parse_keywords(&[Keyword::RESTART, Keyword::IDENTITY])
            || p.parse_keywords(&[Keyword::CONTINUE, Keyword::IDENTITY]);
        let _ = p.parse_keyword(Keyword::CASCADE) || p.parse_keyword(Keyword::RESTRICT);
        return Ok(FedsqlStatement::Truncate { names });
    }
    if parse_word(p, "RESUME") {
        expect_word(p, "TRAINING")?;
        let name = parse_name(p)?;
        return Ok(FedsqlStatement::ResumeTraining { name });
    }
    if parse_word(p, "REFRESH") {
        expect_word(p, "SOURCE")?;
        let name = parse_name(p)?;
        return Ok(FedsqlStatement::RefreshSource { name });
    }
    if p.parse_keyword(Keyword::SHOW) {
        if parse_word(p, "SOURCES") {
            return Ok(FedsqlStatement::ShowSources);
        }
        if parse_word(p, "MODELS") {
            return Ok(FedsqlStatement::ShowModels);
        }
        expect_word(p, "VERSIONS")?;
        p.expect_keyword(Keyword::IN)?;
        expect_word(p, "MODEL")?;
        let model = parse_name(p)?;
        return Ok(FedsqlStatement::ShowVersions { model });
    }
    if parse_word(p, "EVALUATE") {
        expect_word(p, "MODEL")?;
        let name = parse_name(p)?;
        let version = if parse_word(p, "VERSION") {
            Some(p.parse_literal_uint()?)
        } else {
            None
        };
        p.expect_keyword(Keyword::ON)?;
        let query = parse_parenthesized_query(p, text)?;
        let federation = if parse_word(p, "FEDERATED") {
            Some(parse_federation(p)?)
        } else {
            None
        };
        return Ok(FedsqlStatement::EvaluateModel(EvaluateModel {
            name,
            version,
            query,
            federation,
        }));
    }
    if parse_word(p, "DESCRIBE") {
        expect_word(p, "MODEL")?;
        let name = parse_name(p)?;
        return Ok(FedsqlStatement::DescribeModel { name });
    }
    p.expect_keyword(Keyword::ALTER)?;
    let relation = if p.parse_keyword(Keyword::TABLE) {
        Some(RelationKind::Table)
    } else if p.parse_keyword(Keyword::VIEW) {
        Some(RelationKind::View)
    } else {
        None
    };
    if let Some(kind) = relation {
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = parse_name_parts(p)?;
        if !p.parse_keywords(&[Keyword::RENAME, Keyword::TO]) {
            return Err(ParserError::ParserError(
                "only ALTER TABLE|VIEW … RENAME TO new_name is supported".into(),
            ));
        }
        let new_name = parse_name(p)?;
        return Ok(FedsqlStatement::RenameRelation {
            kind,
            if_exists,
            name,
            new_name,
        });
    }
    expect_word(p, "MODEL")?;
    let name = parse_name(p)?;
    p.expect_keyword(Keyword::SET)?;
    expect_word(p, "ACTIVE")?;
    expect_word(p, "VERSION")?;
    let version = p.parse_literal_uint()?;
    Ok(FedsqlStatement::AlterModelSetActiveVersion { name, version })
}

/// What follows `FEDERATED`: `BY column` or `ON SITES ('site', …)`.
fn parse_federation(p: &mut Parser<'_>) -> Result<Federation, ParserError> {
    if p.parse_keyword(Keyword::BY) {
        return Ok(Federation::ByColumn(parse_name(p)?));
    }
    if !p.parse_keyword(Keyword::ON) {
        return p.expected("BY column or ON SITES ('site', …)", p.peek_token());
    }
    expect_word(p, "SITES")?;
    p.expect_token(&Token::LParen)?;
    let sites = p.parse_comma_separated(|p| p.parse_literal_string())?;
    p.expect_token(&Token::RParen)?;
    Ok(Federation::OnSites(sites))
}

fn parse_create_encoder(
    p: &mut Parser<'_>,
    or_replace: bool,
) -> Result<FedsqlStatement, ParserError> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parse_name(p)?;
    p.expect_keyword(Keyword::FROM)?;
    let path = p.parse_literal_string()?;
    Ok(FedsqlStatement::CreateEncoder {
        name,
        path,
        if_not_exists,
        or_replace,
    })
}

fn parse_create_source(p: &mut Parser<'_>) -> Result<FedsqlStatement, ParserError> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parse_name(p)?;
    p.expect_keyword(Keyword::TYPE)?;
    let kind_token = p.next_token();
    let kind = match &kind_token.token {
        Token::Word(w) => SourceKind::from_word(&w.value),
        Token::SingleQuotedString(s) => SourceKind::from_word(s),
        _ => None,
    };
    let Some(kind) = kind else {
        return p.expected(
            "a source type (postgres, odbc, kafka, flightsql)",
            kind_token,
        );
    };
    let options = if p.parse_keyword(Keyword::OPTIONS) {
        parse_options(p)?
    } else {
        Vec::new()
    };
    Ok(FedsqlStatement::CreateSource(CreateSource {
        name,
        if_not_exists,
        kind,
        options,
    }))
}

fn parse_train_body(
    p: &mut Parser<'_>,
    text: &SourceText<'_>,
    existing: ExistingModel,
) -> Result<FedsqlStatement, ParserError> {
    let name = parse_name(p)?;
    p.expect_keyword(Keyword::USING)?;
    let algorithm = parse_name(p)?;
    let algorithm_params = if p.peek_token().token == Token::LParen {
        parse_options(p)?
    } else {
        Vec::new()
    };
    expect_word(p, "PREDICT")?;
    let target = parse_name(p)?;
    p.expect_keyword(Keyword::FROM)?;
    let input = if p.peek_token().token == Token::LParen {
        TrainingInput::Query(parse_parenthesized_query(p, text)?)
    } else {
        TrainingInput::Table(p.parse_object_name(false)?.to_string())
    };
    expect_word(p, "FEDERATED")?;
    let federation = parse_federation(p)?;
    let options = if p.parse_keyword(Keyword::WITH) {
        parse_options(p)?
    } else {
        Vec::new()
    };
    Ok(FedsqlStatement::TrainModel(TrainModel {
        name,
        existing,
        algorithm,
        algorithm_params,
        target,
        input,
        federation,
        options,
    }))
}

/// `( query )`, returning the query's exact text.
fn parse_parenthesized_query(
    p: &mut Parser<'_>,
    text: &SourceText<'_>,
) -> Result<String, ParserError> {
    p.expect_token(&Token::LParen)?;
    let start = p.peek_token().span.start;
    p.parse_query()?;
    let end = p.get_current_token().span.end;
    p.expect_token(&Token::RParen)?;
    Ok(text.sql[text.byte(start)..text.byte(end)].to_string())
}

/// `( key value, key = value, … )`; keys may be words or quoted strings.
fn parse_options(p: &mut Parser<'_>) -> Result<Vec<(String, OptionValue)>, ParserError> {
    p.expect_token(&Token::LParen)?;
    if p.consume_token(&Token::RParen) {
        return Ok(Vec::new());
    }
    let options = p.parse_comma_separated(|p| {
        let key_token = p.next_token();
        let key = match &key_token.token {
            Token::Word(w) => w.value.to_ascii_lowercase(),
            Token::SingleQuotedString(s) => s.to_ascii_lowercase(),
            _ => return p.expected("an option name", key_token),
        };
        // `key = value` and `key value` are both accepted.
        let _ = p.consume_token(&Token::Eq);
        Ok((key, parse_option_value(p)?))
    })?;
    p.expect_token(&Token::RParen)?;
    Ok(options)
}

fn parse_option_value(p: &mut Parser<'_>) -> Result<OptionValue, ParserError> {
    let token = p.next_token();
    match &token.token {
        Token::SingleQuotedString(s) => Ok(OptionValue::String(s.clone())),
        Token::Number(n, _) => Ok(OptionValue::Number(n.clone())),
        Token::Minus => match p.next_token().token {
            Token::Number(n, _) => Ok(OptionValue::Number(format!("-{n}"))),
            _ => p.expected("a number after '-'", token),
        },
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("true") => {
            Ok(OptionValue::Boolean(true))
        }
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("false") => {
            Ok(OptionValue::Boolean(false))
        }
        Token::Word(w) => Ok(OptionValue::Word(w.value.to_ascii_lowercase())),
        _ => p.expected("an option value (a string, number, boolean or word)", token),
    }
}

/// An identifier, lower-cased unless quoted (Postgres folding rules).
pub(crate) fn parse_name(p: &mut Parser<'_>) -> Result<String, ParserError> {
    let ident = p.parse_identifier()?;
    Ok(match ident.quote_style {
        Some(_) => ident.value,
        None => ident.value.to_ascii_lowercase(),
    })
}

/// A possibly qualified name's parts, lower-cased unless quoted.
fn parse_name_parts(p: &mut Parser<'_>) -> Result<Vec<String>, ParserError> {
    Ok(p.parse_object_name(false)?
        .0
        .iter()
        .filter_map(|part| part.as_ident())
        .map(|ident| match ident.quote_style {
            Some(_) => ident.value.clone(),
            None => ident.value.to_ascii_lowercase(),
        })
        .collect())
}

/// Consumes the unquoted word `word` if it is next.
pub(crate) fn parse_word(p: &mut Parser<'_>, word: &str) -> bool {
    match &p.peek_token().token {
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word) => {
            p.next_token();
            true
        }
        _ => false,
    }
}

pub(crate) fn expect_word(p: &mut Parser<'_>, word: &str) -> Result<(), ParserError> {
    if parse_word(p, word) {
        Ok(())
    } else {
        p.expected(word, p.peek_token())
    }
}

/// Rewrites JDBC/ODBC-style `?` parameter markers to Postgres's numbered
/// `$1`, `$2`, … (what DataFusion plans), leaving `?` inside strings,
/// identifiers and comments alone. Returns `None` when there is nothing to
/// rewrite, or when the text already uses numbered markers (mixing both
/// would be ambiguous).
///
/// ```
/// assert_eq!(
///     fedsql_sql::parser::number_question_marks("SELECT ? + ?, '?'").as_deref(),
///     Some("SELECT $1 + $2, '?'")
/// );
/// ```
pub fn number_question_marks(sql: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .ok()?;
    let is_question =
        |t: &Token| matches!(t, Token::Question) || matches!(t, Token::Placeholder(p) if p == "?");
    if tokens
        .iter()
        .any(|t| matches!(&t.token, Token::Placeholder(p) if p.starts_with('$')))
    {
        return None;
    }
    let text = SourceText::new(sql);
    let marks: Vec<usize> = tokens
        .iter()
        .filter(|t| is_question(&t.token))
        .map(|t| text.byte(t.span.start))
        .collect();
    if marks.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(sql.len() + 2 * marks.len());
    let mut from = 0;
    for (i, at) in marks.into_iter().enumerate() {
        out.push_str(&sql[from..at]);
        out.push_str(&format!("${}", i + 1));
        from = at + 1;
    }
    out.push_str(&sql[from..]);
    Some(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn question_marks_become_numbered_placeholders() {
        assert_eq!(
            number_question_marks("SELECT ?, 'a?b', \"c?\" FROM t WHERE x = ? -- ?\n").as_deref(),
            Some("SELECT $1, 'a?b', \"c?\" FROM t WHERE x = $2 -- ?\n")
        );
        assert_eq!(number_question_marks("SELECT $1, ?"), None);
        assert_eq!(number_question_marks("SELECT 1"), None);
        assert_eq!(
            number_question_marks("SELECT 'é', ?").as_deref(),
            Some("SELECT 'é', $1")
        );
    }

    use super::*;

    fn one(sql: &str) -> FedsqlStatement {
        match parse(sql).unwrap().remove(0) {
            Statement::Fedsql { statement, .. } => statement,
            other => panic!("not a fedsql statement: {other:?}"),
        }
    }

    #[test]
    fn standard_sql_keeps_its_text_and_offsets() {
        let sql = "SELECT 'a;b' AS x;\n  select * from t where y = ';' ; -- done\n";
        let stmts = parse(sql).unwrap();
        assert_eq!(stmts.len(), 2);
        assert_eq!(stmts[0].text(), "SELECT 'a;b' AS x");
        assert_eq!(stmts[0].offset(), 0);
        assert_eq!(stmts[1].text(), "select * from t where y = ';'");
        assert_eq!(stmts[1].offset(), 21);
    }

    #[test]
    fn empty_and_comment_only_input_has_no_statements() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse(" ;; -- nothing\n").unwrap().is_empty());
    }

    #[test]
    fn unicode_text_is_sliced_on_char_boundaries() {
        let stmts = parse("SELECT 'żółw'; SHOW SOURCES").unwrap();
        assert_eq!(stmts[0].text(), "SELECT 'żółw'");
        assert_eq!(stmts[1].offset(), 15);
    }

    #[test]
    fn create_source_with_options() {
        let s = one(
            "CREATE SOURCE IF NOT EXISTS pg TYPE postgres OPTIONS (url 'postgres://u@h:1/db', password_env 'PGPW', partitions 4)",
        );
        assert_eq!(
            s,
            FedsqlStatement::CreateSource(CreateSource {
                name: "pg".into(),
                if_not_exists: true,
                kind: SourceKind::Postgres,
                options: vec![
                    (
                        "url".into(),
                        OptionValue::String("postgres://u@h:1/db".into())
                    ),
                    ("password_env".into(), OptionValue::String("PGPW".into())),
                    ("partitions".into(), OptionValue::Number("4".into())),
                ],
            })
        );
    }

    #[test]
    fn create_source_rejects_unknown_type_with_position() {
        let err = parse("CREATE SOURCE x TYPE mongo").unwrap_err();
        assert!(err.message.contains("source type"), "{}", err.message);
        assert_eq!(err.position, Some(22));
    }

    #[test]
    fn drop_and_show_sources() {
        assert_eq!(
            one("drop source if exists \"Pg\""),
            FedsqlStatement::DropSource {
                name: "Pg".into(),
                if_exists: true
            }
        );
        assert_eq!(one("SHOW SOURCES"), FedsqlStatement::ShowSources);
        assert_eq!(
            one("refresh source \"Pg\""),
            FedsqlStatement::RefreshSource { name: "Pg".into() }
        );
    }

    #[test]
    fn train_model_full_form() {
        let s = one(
            "TRAIN MODEL OR REPLACE fraud USING mlp(hidden_units = '64,32', activation = 'relu') \
             PREDICT is_fraud FROM (SELECT amount, (x) FROM demo.bank.transactions WHERE a = ')') \
             FEDERATED BY region WITH (rounds = 5, strategy = fedprox, proximal_mu = 0.1, accept_failures = false)",
        );
        let FedsqlStatement::TrainModel(t) = s else {
            panic!()
        };
        assert_eq!(t.name, "fraud");
        assert_eq!(t.existing, ExistingModel::Replace);
        assert_eq!(t.algorithm, "mlp");
        assert_eq!(t.algorithm_params.len(), 2);
        assert_eq!(t.target, "is_fraud");
        assert_eq!(
            t.input,
            TrainingInput::Query(
                "SELECT amount, (x) FROM demo.bank.transactions WHERE a = ')'".into()
            )
        );
        assert_eq!(t.federation, Federation::ByColumn("region".into()));
        assert_eq!(
            t.options,
            vec![
                ("rounds".into(), OptionValue::Number("5".into())),
                ("strategy".into(), OptionValue::Word("fedprox".into())),
                ("proximal_mu".into(), OptionValue::Number("0.1".into())),
                ("accept_failures".into(), OptionValue::Boolean(false)),
            ]
        );
    }

    #[test]
    fn a_train_statement_displays_as_sql_that_parses_back() {
        for sql in [
            "TRAIN MODEL OR REPLACE \"Fraud\" USING mlp(hidden_units = '64,32', \"odd key\" = 'it''s') \
             PREDICT is_fraud FROM (SELECT amount, (x) FROM demo.bank.transactions WHERE a = ')') \
             FEDERATED BY \"Region\" WITH (rounds = 5, strategy = fedprox, lr = -0.1, ok = false)",
            "TRAIN MODEL m USING logistic_regression PREDICT y FROM demo.bank.t \
             FEDERATED ON SITES ('eu', 'o''brien')",
        ] {
            let FedsqlStatement::TrainModel(t) = one(sql) else {
                panic!("{sql}")
            };
            let FedsqlStatement::TrainModel(again) = one(&t.to_string()) else {
                panic!("{t}")
            };
            assert_eq!(again, t, "{t}");
        }
        assert_eq!(
            one("create or replace encoder MiniLM from '/models/minilm'"),
            FedsqlStatement::CreateEncoder {
                name: "minilm".into(),
                path: "/models/minilm".into(),
                if_not_exists: false,
                or_replace: true,
            }
        );
        assert_eq!(
            one("DROP ENCODER IF EXISTS minilm"),
            FedsqlStatement::DropEncoder {
                name: "minilm".into(),
                if_exists: true,
            }
        );
        assert_eq!(
            one("resume training \"Fraud\""),
            FedsqlStatement::ResumeTraining {
                name: "Fraud".into()
            }
        );
    }

    #[test]
    fn create_model_is_a_synonym_and_sites_parse() {
        let s = one(
            "CREATE OR REPLACE MODEL m USING logistic_regression PREDICT y FROM demo.bank.t FEDERATED ON SITES ('eu', 'us')",
        );
        let FedsqlStatement::TrainModel(t) = s else {
            panic!()
        };
        assert_eq!(t.existing, ExistingModel::Replace);
        assert_eq!(t.input, TrainingInput::Table("demo.bank.t".into()));
        assert_eq!(
            t.federation,
            Federation::OnSites(vec!["eu".into(), "us".into()])
        );
        assert_eq!(
            one("CREATE SITE eu OPTIONS (token_env 'EU_TOKEN')"),
            FedsqlStatement::CreateSite {
                name: "eu".into(),
                if_not_exists: false,
                options: vec![("token_env".into(), OptionValue::String("EU_TOKEN".into()))],
            }
        );
        assert_eq!(
            one("DROP SITE IF EXISTS eu"),
            FedsqlStatement::DropSite {
                name: "eu".into(),
                if_exists: true
            }
        );
        let FedsqlStatement::TrainModel(t) = one(
            "CREATE MODEL IF NOT EXISTS m USING linear_regression PREDICT y FROM t FEDERATED BY c",
        ) else {
            panic!()
        };
        assert_eq!(t.existing, ExistingModel::IfNotExists);
    }

    #[test]
    fn model_management_statements() {
        assert_eq!(one("SHOW MODELS"), FedsqlStatement::ShowModels);
        assert_eq!(
            one("describe model Fraud"),
            FedsqlStatement::DescribeModel {
                name: "fraud".into()
            }
        );
        assert_eq!(
            one("SHOW VERSIONS IN MODEL fraud"),
            FedsqlStatement::ShowVersions {
                model: "fraud".into()
            }
        );
        assert_eq!(
            one("ALTER MODEL fraud SET ACTIVE VERSION 3"),
            FedsqlStatement::AlterModelSetActiveVersion {
                name: "fraud".into(),
                version: 3
            }
        );
        assert_eq!(
            one("DROP MODEL IF EXISTS fraud VERSION 2"),
            FedsqlStatement::DropModel {
                name: "fraud".into(),
                if_exists: true,
                version: Some(2)
            }
        );
        assert_eq!(
            one("EVALUATE MODEL fraud VERSION 1 ON (SELECT * FROM t) FEDERATED BY region"),
            FedsqlStatement::EvaluateModel(EvaluateModel {
                name: "fraud".into(),
                version: Some(1),
                query: "SELECT * FROM t".into(),
                federation: Some(Federation::ByColumn("region".into())),
            })
        );
        assert_eq!(
            one("EVALUATE MODEL fraud ON (SELECT * FROM t) FEDERATED ON SITES ('eu', 'us')"),
            FedsqlStatement::EvaluateModel(EvaluateModel {
                name: "fraud".into(),
                version: None,
                query: "SELECT * FROM t".into(),
                federation: Some(Federation::OnSites(vec!["eu".into(), "us".into()])),
            })
        );
    }

    #[test]
    fn errors_carry_positions_across_statements() {
        let sql = "SELECT 1;\nTRAIN MODEL m USING mlp PREDICT y FROM t FEDERATED region";
        let err = parse(sql).unwrap_err();
        // `region` is at character 59 (1-based) of the whole string.
        assert_eq!(err.position, Some(sql.find("region").unwrap() + 1));
        assert!(err.message.contains("Expected"), "{}", err.message);
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let err = parse("SHOW MODELS now").unwrap_err();
        assert!(err.message.contains("end of statement"), "{}", err.message);
        assert_eq!(err.position, Some(13));
    }

    #[test]
    fn similar_standard_statements_are_not_captured() {
        for sql in [
            "CREATE VIEW v AS SELECT 1",
            "SHOW TABLES",
            "DROP VIEW v",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'x'",
            "DESCRIBE demo.bank.customers",
            "SELECT \"TRAIN\" FROM model",
        ] {
            assert!(
                matches!(parse(sql).unwrap()[0], Statement::Sql { .. }),
                "{sql}"
            );
        }
    }

    #[test]
    fn unterminated_string_is_a_tokenizer_error_with_position() {
        let err = parse("SELECT 'abc").unwrap_err();
        assert_eq!(err.position, Some(8));
    }
}
