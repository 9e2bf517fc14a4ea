"""Staged (multi-fidelity) survival: the elitist variant keeps a parent that early stages would drop."""

import numpy as np
from pymoo.core.individual import Individual
from pymoo.core.population import Population
from pymoo.core.problem import Problem

from optishear_moo.search.levels import SelectionStage, StagedSurvival

STAGES = (SelectionStage(2, eval_samples=1), SelectionStage(1))


class Scores(Problem):
    """Candidates are [early score, final score]: the first stage reads one, the last the other."""

    def __init__(self):
        super().__init__(n_var=2, n_obj=1)
        self.asked = []

    def stage_score(self, x, stage):
        self.asked.append((tuple(x), stage.eval_samples))
        return float(x[0] if stage.eval_samples is not None else x[1])


def population(parent, offspring):
    kept = Individual(X=np.array(parent, dtype=float), F=np.array([parent[0]]))
    kept.data["kl"] = parent[1]  # a survivor of the generation before carries its score
    fresh = Population.new("X", np.array(offspring, dtype=float))
    fresh.set("F", np.array([[x[0]] for x in offspring]))
    return Population.merge(Population.create(kept), fresh)


def test_an_elitist_parent_skips_to_the_last_stage_and_stays_until_beaten_there():
    # the parent is worst on the early windows and best on all of them
    offspring = [[0.1, 0.9], [0.2, 0.8], [0.3, 0.1]]
    plain = StagedSurvival(STAGES, "kl").do(Scores(), population([0.5, 0.2], offspring), n_survive=1)
    assert plain[0].X.tolist() == [0.2, 0.8]  # the parent fell at the first stage; worse at the last
    problem = Scores()
    elitist = StagedSurvival(STAGES, "kl", elitist=True)
    kept = elitist.do(problem, population([0.5, 0.2], offspring), n_survive=1)
    assert kept[0].X.tolist() == [0.5, 0.2] and kept[0].data["kl"] == 0.2
    assert ((0.5, 0.2), 1) not in problem.asked and ((0.5, 0.2), None) in problem.asked
    beaten = StagedSurvival(STAGES, "kl", elitist=True).do(
        Scores(), population([0.5, 0.2], [[0.1, 0.15], [0.2, 0.8]]), n_survive=1)
    assert beaten[0].X.tolist() == [0.1, 0.15]  # an offspring better on all windows replaces it


def test_an_elitist_first_population_is_ranked_by_the_last_stage():
    first = Population.new("X", np.array([[0.1, 0.9], [0.9, 0.1]]))
    first.set("F", np.array([[0.1], [0.9]]))
    ranked = StagedSurvival(STAGES, "kl", elitist=True).do(Scores(), first, n_survive=2)
    assert [ind.X.tolist() for ind in ranked] == [[0.9, 0.1], [0.1, 0.9]]
    assert [ind.data["kl"] for ind in ranked] == [0.1, 0.9]
    plain = StagedSurvival(STAGES, "kl").do(Scores(), first, n_survive=2)
    assert plain[0].X.tolist() == [0.1, 0.9]  # by F, as before


def test_the_first_population_counts_as_parents_before_it_holds_a_score():
    def generation():
        start = Population.new("X", np.array([[0.5, 0.2]]))
        start.set("F", np.array([[0.5]]))
        offspring = Population.new("X", np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.1]]))
        offspring.set("F", np.array([[0.1], [0.2], [0.3]]))
        return start, Population.merge(start, offspring)

    class Algorithm:
        def __init__(self, pop):
            self.pop = pop

    start, merged = generation()
    elitist = StagedSurvival(STAGES, "kl", elitist=True)
    kept = elitist.do(Scores(), merged, n_survive=1, algorithm=Algorithm(start))
    assert kept[0].X.tolist() == [0.5, 0.2]
    _, merged = generation()
    dropped = StagedSurvival(STAGES, "kl", elitist=True).do(Scores(), merged, n_survive=1)
    assert dropped[0].X.tolist() == [0.2, 0.8]  # without the algorithm it looks like an offspring
