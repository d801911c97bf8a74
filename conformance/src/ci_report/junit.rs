//! JUnit XML through quick-junit: one test suite per [`Case::suite`], one
//! test case per judged item, `<failure>` when it does not conform and
//! `<error>` when it could not be judged. quick-junit drops the characters
//! XML 1.0 cannot carry (a finding's detail may quote control bytes from a
//! hostile image or message), which an escaping `replace` chain does not.

use super::{Case, Outcome};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// The JUnit XML of `cases`, suites in order of first appearance.
pub fn render(title: &str, cases: &[Case]) -> Result<String, String> {
    let mut report = Report::new(title);
    let mut suites: Vec<TestSuite> = Vec::new();
    for c in cases {
        let status = match &c.outcome {
            Outcome::Pass => TestCaseStatus::success(),
            Outcome::Fail { message, detail } => {
                non_success(NonSuccessKind::Failure, message, detail)
            }
            Outcome::Error { message, detail } => {
                non_success(NonSuccessKind::Error, message, detail)
            }
        };
        let mut case = TestCase::new(c.name.as_str(), status);
        case.set_classname(c.suite.as_str());
        let i = match suites.iter().position(|s| s.name.as_str() == c.suite) {
            Some(i) => i,
            None => {
                suites.push(TestSuite::new(c.suite.as_str()));
                suites.len() - 1
            }
        };
        if let Some(s) = suites.get_mut(i) {
            s.add_test_case(case);
        }
    }
    report.add_test_suites(suites);
    report.to_string().map_err(|e| format!("JUnit: {e}"))
}

fn non_success(kind: NonSuccessKind, message: &str, detail: &str) -> TestCaseStatus {
    let mut s = TestCaseStatus::non_success(kind);
    s.set_message(message);
    if !detail.is_empty() {
        s.set_description(detail);
    }
    s
}
