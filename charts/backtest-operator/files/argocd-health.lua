-- Argo CD health check for backtest.dev/BacktestService (Lua 5.1, as Argo CD runs it).
-- Install it in argocd-cm under resource.customizations.health.backtest.dev_BacktestService (see the
-- chart's README). It reads the conditions the operator writes, kstatus-style:
--   Stalled=True            -> Degraded   (the last release was rolled back or aborted)
--   phase Paused            -> Suspended  (spec.paused holds the rollout)
--   Reconciling=True        -> Progressing (a rollout or its bake runs, or the first revision starts)
--   Ready=True              -> Healthy    (stable serves, nothing in flight)
--   Ready=False             -> Degraded   (stable has no ready pods)
-- and Progressing until the operator has observed the object's latest generation.
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end
local function holds(kind)
  return conditions[kind] ~= nil and conditions[kind].status == "True"
end
local function says(kind)
  return conditions[kind] ~= nil and (conditions[kind].message or "") or ""
end
if holds("Stalled") then
  hs.status = "Degraded"
  hs.message = says("Stalled")
  return hs
end
if obj.status.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = obj.status.message or "Rollout paused"
  return hs
end
if holds("Reconciling") then
  hs.status = "Progressing"
  hs.message = says("Reconciling")
  return hs
end
if holds("Ready") then
  hs.status = "Healthy"
  hs.message = says("Ready")
  return hs
end
if conditions["Ready"] ~= nil then
  hs.status = "Degraded"
  hs.message = says("Ready")
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the operator to report conditions"
return hs
