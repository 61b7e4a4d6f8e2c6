//! Who should host a room: the member closest to everyone (seed 002).
//!
//! Each member measures its delay to each other member over its path and
//! reports it; the host puts the reports in a directed graph (an edge
//! i → j weighs what i measured to j), computes all-pairs shortest paths
//! (Floyd–Warshall: a relayed pair may be closer through a third member)
//! and ranks members by closeness centrality, 1 / Σ_j dist(i, j).
//!
//! The order, exactly (no floating point): fewer members unreachable
//! first, then the smaller sum of shortest delays to the reachable ones
//! (the larger closeness), then the lower member id. A member that
//! reported nothing reaches nobody and ranks after every member that did.

use std::collections::BTreeMap;

/// Delays reported: `reports[i][j]` = what `i` measured to `j`, µs.
pub type Reports<M> = BTreeMap<M, BTreeMap<M, u32>>;

/// All-pairs shortest delays among `members` (µs; `None` = unreachable).
pub fn shortest<M: Ord + Copy>(members: &[M], reports: &Reports<M>) -> Vec<Vec<Option<u64>>> {
    let n = members.len();
    let mut d = vec![vec![None; n]; n];
    for (i, a) in members.iter().enumerate() {
        d[i][i] = Some(0);
        let Some(row) = reports.get(a) else { continue };
        for (j, b) in members.iter().enumerate() {
            if i != j
                && let Some(&us) = row.get(b)
            {
                d[i][j] = Some(u64::from(us));
            }
        }
    }
    for k in 0..n {
        let via_k = d[k].clone();
        for row in d.iter_mut() {
            let Some(ik) = row[k] else { continue };
            for (cell, kj) in row.iter_mut().zip(&via_k) {
                if let Some(kj) = kj {
                    let via = ik + kj;
                    if cell.is_none_or(|cur| via < cur) {
                        *cell = Some(via);
                    }
                }
            }
        }
    }
    d
}

/// `members` ranked for hosting, best first (see the module's rule).
pub fn candidates<M: Ord + Copy>(members: &[M], reports: &Reports<M>) -> Vec<M> {
    let d = shortest(members, reports);
    let mut ranked: Vec<(usize, u64, M)> = members
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let unreachable = d[i].iter().filter(|x| x.is_none()).count();
            let sum = d[i].iter().flatten().sum();
            (unreachable, sum, m)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, _, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports(edges: &[(u8, u8, u32)]) -> Reports<u8> {
        let mut r = Reports::new();
        for &(a, b, us) in edges {
            r.entry(a).or_default().insert(b, us);
        }
        r
    }

    #[test]
    fn the_centre_of_a_line_hosts_and_paths_go_through_third_members() {
        // 1 - 2 - 3 - 4, 10 ms a hop; 1 and 4 measured nothing to each
        // other (no path): shortest paths go through 2 and 3.
        let mut e = Vec::new();
        for (a, b) in [(1, 2), (2, 3), (3, 4)] {
            e.push((a, b, 10_000));
            e.push((b, a, 10_000));
        }
        let r = reports(&e);
        let d = shortest(&[1, 2, 3, 4], &r);
        assert_eq!(d[0][3], Some(30_000));
        // Sums: 1: 60, 2: 40, 3: 40, 4: 60 (ms): 2 and 3 tie, lower id first.
        assert_eq!(candidates(&[1, 2, 3, 4], &r), vec![2, 3, 1, 4]);
    }

    #[test]
    fn directed_delays_count_as_measured_and_silence_ranks_last() {
        // 3 reports nothing: it reaches nobody, whatever others measured.
        let r = reports(&[(1, 2, 5_000), (2, 1, 50_000), (1, 3, 5_000), (2, 3, 5_000)]);
        // 1: 5 + 5 = 10 ms; 2: 50 + 5 = 55 ms; 3: unreachable to both.
        assert_eq!(candidates(&[3, 2, 1], &r), vec![1, 2, 3]);
    }

    #[test]
    fn equal_centralities_go_by_id() {
        let r = Reports::<u8>::new();
        assert_eq!(candidates(&[9, 4, 7], &r), vec![4, 7, 9]);
    }
}
